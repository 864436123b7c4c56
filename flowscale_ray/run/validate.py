"""`flowscale validate`: everything a run would check before any work, and what it would do; writes nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flowscale_ray.config import JobConfig
from flowscale_ray.run.components import build_components, load_prompts, resolve_sampler_shift
from flowscale_ray.run.output import RunOutput


def validate_job(job: JobConfig, base_dir: Path | None = None, source: str = "job") -> list[str]:
    """Lines describing the job once its prompts, components and output location check out; bad input
    raises ConfigError."""
    job = resolve_sampler_shift(job)
    prompts = load_prompts(job.prompts, base_dir, job.storage)
    build_components(job)
    output = RunOutput.open(job, prompts)
    state = output.describe_state()  # raises on a conflicting run: that is bad input too
    return [
        f"{source}: ok ({len(prompts)} prompts)",
        f"  method  {job.method.name} {dataclasses.asdict(job.method.settings)}",
        f"  sampler {dataclasses.asdict(job.sampler)}",
        f"  output  {output.writer.root} ({output.num_shards} shards of {job.output.shard_size} prompts): {state}",
    ]
