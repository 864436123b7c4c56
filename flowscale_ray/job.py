"""Run a job: build the components a JobConfig names, run every prompt through an executor, write results.

Results (until the Parquet writer lands): `<output.dir>/<name>/results.jsonl`, one row per prompt, plus a
PNG per prompt and a contact sheet when the model decodes to images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from flowscale_ray.config import ConfigError, JobConfig, PromptFileConfig, anchored
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask, TaskResult
from flowscale_ray.models import FlowModel, build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import Reward, build_reward


def load_prompts(spec: list[str] | PromptFileConfig, base_dir: Path | None = None) -> list[Prompt]:
    if isinstance(spec, PromptFileConfig):
        path = Path(spec.file)
        if not path.is_absolute() and base_dir is not None and not path.exists():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError("prompts.file", f"no such file: {spec.file}")
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise ConfigError("prompts.file", f"{spec.file} is not UTF-8 text") from None
        texts = [(i + 1, t.strip()) for i, t in enumerate(lines) if t.strip()]
        if not texts:
            raise ConfigError("prompts.file", f"{spec.file} holds no prompts")
        return [Prompt(id=f"{path.stem}-{n:06d}", text=t) for n, t in texts]
    if not spec:
        raise ConfigError("prompts", "must hold at least one prompt")
    return [Prompt(id=f"prompt-{i:06d}", text=t) for i, t in enumerate(spec)]


def _build(kind: str, builder: Callable[[str, dict[str, Any]], Any], name: str, options: dict[str, Any]) -> Any:
    """Build a component; its errors become one-line ConfigErrors under `kind` (or `kind.options`)."""
    try:
        return builder(name, options)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if msg.startswith(f"{kind}."):
            raise anchored(kind, msg) from None
        raise ConfigError(f"{kind}.options", f"cannot build {kind} {name!r}: {msg}") from None


def build_components(job: JobConfig) -> tuple[FlowModel, Reward, Reward | None]:
    model = _build("model", build_model, job.model.name, job.model.options)
    reward = _build("reward", build_reward, job.reward.name, job.reward.options)
    held = None
    if job.held_out is not None:
        held = _build("held_out", build_reward, job.held_out.name, job.held_out.options)
    return model, reward, held


def run_job(job: JobConfig, base_dir: Path | None = None, log: Callable[[str], None] = print) -> list[TaskResult]:
    prompts = load_prompts(job.prompts, base_dir)
    model, reward, held = build_components(job)
    method = job.method.build()
    engine = ParticleEngine(model, job.sampler, micro_batch=job.executor.micro_batch)
    executor = InProcessExecutor(engine, reward, held, in_flight=job.executor.in_flight)
    planned = method.planned_nfe(executor.context)
    log(
        f"job {job.name}: {len(prompts)} prompts, method {method.name} ({planned} NFE/prompt), "
        f"sampler {job.sampler.label}, model {model.model_id}, reward {reward.name}"
    )
    started = time.perf_counter()
    tasks = [SearchTask(prompt=p, method=method, seed=job.seed) for p in prompts]
    results = sorted(executor.run(tasks), key=lambda r: r.prompt.id)
    elapsed = time.perf_counter() - started
    out_dir = Path(job.output.dir) / job.name
    write_results(out_dir, job, method.settings(), results, save_images=job.output.save_images)
    log(format_table(results))
    nfe = sum(r.nfe for r in results)
    rate = nfe / max(elapsed, 1e-9)
    log(f"{len(results)} prompts, {nfe} NFE in {elapsed:.1f}s ({rate:.0f} NFE/s); results in {out_dir}")
    return results


def result_row(r: TaskResult, job: JobConfig, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "prompt_id": r.prompt.id,
        "prompt": r.prompt.text,
        "seed": r.prompt.seed if r.prompt.seed is not None else job.seed,
        "method": settings,
        "sampler": asdict(job.sampler),
        "model": job.model.name,
        "reward": r.reward,
        "held_out": r.held_out,
        "search_reward": r.outcome.reward,
        "nfe": r.nfe,
        "seconds": round(r.seconds, 4),
        "lineage": [_request_dict(q) for q in r.lineage],
        "steps": [asdict(rec) for rec in r.outcome.records],
        "sample": r.sample.flatten().tolist() if r.sample.numel() <= 64 else None,
    }


def _request_dict(req: Any) -> dict[str, Any]:
    d = asdict(req)
    d["kind"] = type(req).__name__.lower()
    return d


def is_image(t: torch.Tensor) -> bool:
    return t.ndim == 3 and t.shape[0] in (1, 3)


def write_results(
    out_dir: Path, job: JobConfig, settings: dict[str, Any], results: list[TaskResult], save_images: bool
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.jsonl.tmp"
    with tmp.open("w") as f:
        for r in results:
            f.write(json.dumps(result_row(r, job, settings)) + "\n")
    tmp.replace(out_dir / "results.jsonl")
    if save_images and results and is_image(results[0].image):
        from flowscale_ray.images import contact_sheet, save_png

        for r in results:
            save_png(r.image, out_dir / f"{r.prompt.id}.png")
        save_png(contact_sheet([r.image for r in results]), out_dir / "contact_sheet.png")


def format_table(results: list[TaskResult]) -> str:
    held = any(r.held_out is not None for r in results)
    header = f"{'prompt':<40} {'reward':>9} " + (f"{'held-out':>9} " if held else "") + f"{'NFE':>6}"
    lines = [header, "-" * len(header)]
    for r in results:
        text = r.prompt.text if len(r.prompt.text) <= 40 else r.prompt.text[:37] + "..."
        row = f"{text:<40} {r.reward:>9.4f} "
        if held:
            row += f"{r.held_out:>9.4f} " if r.held_out is not None else f"{'-':>9} "
        lines.append(row + f"{r.nfe:>6d}")
    if results:
        mean = sum(r.reward for r in results) / len(results)
        lines.append(f"{'mean':<40} {mean:>9.4f}")
    return "\n".join(lines)
