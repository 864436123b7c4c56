"""`flowscale validate`: everything a run would check before any work, and what it would do; writes nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flowscale_ray.config import JobConfig
from flowscale_ray.run.budget import job_cost, sized_for_job
from flowscale_ray.run.components import PROBES, build_components, load_prompts, resolve_sampler_shift, sampler_check
from flowscale_ray.run.output import RunOutput
from flowscale_ray.search.plan import plan
from flowscale_ray.search.protocol import SearchContext


def validate_job(job: JobConfig, base_dir: Path | None = None, source: str = "job") -> list[str]:
    """Lines describing the job once its prompts, components and output location check out; bad input
    raises ConfigError."""
    job = resolve_sampler_shift(job)
    prompts = load_prompts(job.prompts, base_dir, job.storage)
    build_components(job, probes=prompts[:PROBES])  # each reward scores a probe sample of the model
    output = RunOutput.open(job, prompts)
    state = output.describe_state()  # raises on a conflicting run: that is bad input too
    lines = [
        f"{source}: ok ({len(prompts)} prompts)",
        f"  method  {job.method.name} {dataclasses.asdict(job.method.settings)}",
        f"  sampler {dataclasses.asdict(job.sampler)}",
        f"  output  {output.writer.root} ({output.num_shards} shards of {job.output.shard_size} prompts): {state}",
        sampler_check(job)[0],
    ]
    b = job.budget
    ctx = SearchContext(grid=job.sampler.grid_times())
    unit = "NFE" if b.unit == "nfe" else "compute units"
    if b.mode == "per_prompt":
        method = job.method.build()
        if b.per_prompt is not None:
            method = sized_for_job(job, method, b.per_prompt)
        cost = plan(method, ctx, job.output.top_k, guided=job.sampler.guided_moves())
        lines.append(
            f"  cost    per prompt: {cost.nfe} NFE, {cost.verifier_calls} verifier calls = {cost.units(b.costs):g} "
            f"compute units (c_d {b.c_d:g}, c_v {b.c_v:g})"
            + (f"; sized to budget.per_prompt {b.per_prompt:g} {b.unit}: {method.settings()}" if b.per_prompt else "")
        )
    if b.mode == "dataset" and b.base_nfe is not None and b.per_round is not None and b.mean_nfe is not None:
        method = job.method.build()
        first, later = sized_for_job(job, method, b.base_nfe), sized_for_job(job, method, b.per_round)
        charge = [job_cost(job, m) for m in (first, later)]
        lines.append(
            f"  budget  dataset: {b.mean_nfe:g} {unit} per prompt on average within each shard; first round "
            f"{charge[0]:g} {unit} {first.settings()}, later rounds {charge[1]:g} {unit} "
            f"{later.settings()}, at most {b.max_rounds} rounds; stop at "
            + " and ".join(
                f"{k} >= {v:g}"
                for k, v in (("reward", b.target_reward), ("held-out", b.target_held_out))
                if v is not None
            )
        )
    return lines
