"""Output rows from search results, with the job's curation rules (top k, minimum rewards).

Per prompt: up to `top_k` rows of status `ok`, best reward first (`rank` 0, 1, ...), for the selected samples
that reach `min_reward` and `min_held_out`; if none does, one `filtered` row whose `error` says why and whose
metrics are the best sample's (no image); a prompt whose search raised gets one `failed` row.

`prompt_table` turns a prompt's rows into Arrow at once, so a row that cannot be encoded (text Arrow refuses, a
metadata value whose `str` raises, an image PIL cannot write) fails that prompt alone, before its shard is
assembled; `failed_table` is a `failed` row that always encodes (text it cannot write is escaped).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import torch

from flowscale_ray.config import JobConfig
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution.tasks import SelectedSample, TaskResult
from flowscale_ray.io.schema import NAMES, encode_lineage, encode_steps, strict_json, to_table
from flowscale_ray.prompts import Prompt

MAX_SAMPLE_VALUES = 65536  # non-image samples up to this size are stored in the `sample` column


@dataclass(frozen=True)
class RunInfo:
    """What every row of a run shares."""

    run_id: str
    config_hash: str
    seed: int
    model_id: str
    method: str
    method_settings: dict[str, Any]
    sampler: SamplerSpec
    reward_name: str
    held_out_name: str | None = None
    save_images: bool = True
    top_k: int = 1
    min_reward: float | None = None
    min_held_out: float | None = None
    c_d: float = 1.0  # compute units per velocity evaluation (budget.c_d)
    c_v: float = 0.0  # compute units per verifier call (budget.c_v)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_job(cls, job: JobConfig, config_hash: str, model_id: str, settings: dict[str, Any]) -> RunInfo:
        return cls(
            run_id=job.run_id,
            config_hash=config_hash,
            seed=job.seed,
            model_id=model_id,
            method=job.method.name,
            method_settings=settings,
            sampler=job.sampler,
            reward_name=job.reward.name,
            held_out_name=job.held_out.name if job.held_out is not None else None,
            save_images=job.output.save_images,
            top_k=job.output.top_k,
            min_reward=job.output.min_reward,
            min_held_out=job.output.min_held_out,
            c_d=job.budget.c_d,
            c_v=job.budget.c_v,
        )


def is_image(t: torch.Tensor) -> bool:
    return t.ndim == 3 and t.shape[0] in (1, 3)


def _base(prompt: Prompt, info: RunInfo, now: datetime) -> dict[str, Any]:
    spec = info.sampler
    row = dict.fromkeys(NAMES)
    row.update(
        run_id=info.run_id,
        prompt_id=prompt.id,
        prompt=prompt.text,
        prompt_metadata=strict_json(prompt.metadata, sort_keys=True) if prompt.metadata else None,
        seed=prompt.seed if prompt.seed is not None else info.seed,
        method=info.method,
        method_settings=strict_json(info.method_settings, sort_keys=True),
        model_id=info.model_id,
        reward_name=info.reward_name,
        held_out_name=info.held_out_name,
        steps=spec.steps,
        interpolant=spec.interpolant,
        sde=spec.sde,
        diffusion=f"{spec.diffusion}*{spec.diffusion_norm:g}" if spec.sde else "none",
        sampler=strict_json(asdict(spec), sort_keys=True),
        config_hash=info.config_hash,
        created_at=now,
    )
    return row


def _keeps(s: SelectedSample, info: RunInfo) -> bool:
    if info.min_reward is not None and not s.reward >= info.min_reward:
        return False
    return info.min_held_out is None or (s.held_out is not None and s.held_out >= info.min_held_out)


def _why_none(samples: list[SelectedSample], info: RunInfo) -> str:
    parts = []
    if info.min_reward is not None:
        low = sum(1 for s in samples if not s.reward >= info.min_reward)
        best = max(s.reward for s in samples)
        parts.append(f"{low} below min_reward {info.min_reward:g} (best reward {best:.6g})")
    if info.min_held_out is not None:
        held = [s.held_out for s in samples if s.held_out is not None]
        low = sum(1 for s in samples if s.held_out is None or not s.held_out >= info.min_held_out)
        best_held = f"{max(held):.6g}" if held else "none"
        parts.append(f"{low} below min_held_out {info.min_held_out:g} (best held-out {best_held})")
    return f"kept 0 of {len(samples)} samples: " + "; ".join(parts)


def rows_for_result(
    result: TaskResult, info: RunInfo, now: datetime | None = None, rounds: int = 1, budget_stop: str | None = None
) -> list[dict[str, Any]]:
    """The rows one finished prompt contributes (see the module docstring); `rounds` and `budget_stop` say what
    a dataset budget gave it (flowscale_ray.run.budget)."""
    from flowscale_ray.images import png_bytes

    now = now or datetime.now(UTC)
    samples = sorted(list(result.selected), key=lambda s: -s.reward)  # rewards are never NaN (rewards.base)
    kept = [s for s in samples if _keeps(s, info)][: info.top_k]
    rows = []
    for rank, s in enumerate(kept or samples[:1]):
        row = _base(result.prompt, info, now)
        if result.seed is not None:
            row["seed"] = result.seed
        row.update(
            rank=rank if kept else None,
            status="ok" if kept else "filtered",
            error=None if kept else _why_none(samples, info),
            reward=s.reward,
            search_reward=s.search_reward,
            held_out=s.held_out,
            nfe=result.nfe,
            verifier_calls=result.verifier_calls,
            compute_units=info.c_d * result.nfe + info.c_v * result.verifier_calls,
            model_seconds=result.model_seconds,
            reward_seconds=result.reward_seconds,
            rounds=rounds,
            budget_stop=budget_stop,
            lineage=encode_lineage(s.lineage),
            step_records=encode_steps(result.outcome.records),
            seconds=result.seconds,
        )
        if is_image(s.image):
            row.update(width=int(s.image.shape[-1]), height=int(s.image.shape[-2]))
            if kept and info.save_images:
                row["image"] = {"bytes": png_bytes(s.image), "path": f"{result.prompt.id}_{rank}.png"}
        elif s.sample.numel() <= MAX_SAMPLE_VALUES:
            row["sample"] = s.sample.detach().float().flatten().tolist()
        rows.append(row)
    return rows


def failed_row(
    prompt: Prompt, info: RunInfo, error: str, seconds: float = 0.0, budget_stop: str | None = None, **metrics: Any
) -> dict[str, Any]:
    """One `failed` row carrying `error`; `metrics` (e.g. `nfe`) fill other columns."""
    row = _base(prompt, info, datetime.now(UTC))
    row.update(status="failed", error=error, seconds=seconds, rounds=1, budget_stop=budget_stop, **metrics)
    return row


def prompt_table(rows: list[dict[str, Any]]) -> pa.Table:
    """One prompt's rows as an Arrow table with the output schema; raises if any value cannot be encoded."""
    return to_table(rows)


def failed_table(
    prompt: Prompt, info: RunInfo, error: str, seconds: float = 0.0, budget_stop: str | None = None, **metrics: Any
) -> pa.Table:
    """`failed_row` as a table, and one that always encodes: when the prompt itself cannot be written (a lone
    surrogate in its text or id, a seed beyond int64, metadata that JSON cannot hold), the row keeps what can be
    written, with such text escaped (`\\ud800`), and says so in `error`."""
    try:
        return to_table([failed_row(prompt, info, error, seconds, budget_stop, **metrics)])
    except Exception:  # the prompt itself is what cannot be written
        pass
    try:
        metadata = strict_json(prompt.metadata, sort_keys=True) if prompt.metadata else None
    except Exception:
        metadata = None
    seed = prompt.seed if prompt.seed is None or -(2**63) <= prompt.seed < 2**63 else None
    safe = Prompt(id=_escaped(prompt.id), text=_escaped(prompt.text), seed=seed)
    row = failed_row(safe, info, _escaped(error), seconds, budget_stop, **metrics)
    row["prompt_metadata"] = None if metadata is None else _escaped(metadata)
    if seed is None and prompt.seed is not None:
        row["seed"] = None
    return to_table([row])


def _escaped(text: str) -> str:
    """`text` as valid UTF-8: characters that cannot be encoded (lone surrogates) as backslash escapes."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")
