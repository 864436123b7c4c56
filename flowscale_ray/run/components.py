"""Building what a job names: its prompts, model, rewards and the sampler's resolution shift."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowscale_ray.config import ConfigError, JobConfig, PromptFileConfig, StorageConfig, anchored
from flowscale_ray.errors import first_line
from flowscale_ray.models import FlowModel, build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import Reward, build_reward


def load_prompts(
    spec: list[str | dict[str, Any]] | PromptFileConfig,
    base_dir: Path | None = None,
    storage: StorageConfig | None = None,
) -> list[Prompt]:
    """Every prompt of a job, validated (see flowscale_ray.io.prompts)."""
    from flowscale_ray.io.prompts import load_prompts as load

    return load(spec, base_dir, storage)


def build(kind: str, builder: Callable[[str, dict[str, Any]], Any], name: str, options: dict[str, Any]) -> Any:
    """Build a component; its errors become one-line ConfigErrors under `kind` (or `kind.options`)."""
    try:
        return builder(name, options)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as exc:
        msg = first_line(exc, typed=False)
        if msg.startswith(f"{kind}."):
            raise anchored(kind, msg) from None
        raise ConfigError(f"{kind}.options", f"cannot build {kind} {name!r}: {msg}") from None


def build_components(job: JobConfig) -> tuple[FlowModel, Reward, Reward | None]:
    """The job's model, reward and held-out reward (None without one), built in this process."""
    model = build("model", build_model, job.model.name, dict(job.model.options))
    reward = build("reward", build_reward, job.reward.name, dict(job.reward.options))
    held = None
    if job.held_out is not None:
        held = build("held_out", build_reward, job.held_out.name, dict(job.held_out.options))
    return model, reward, held


def resolve_sampler_shift(job: JobConfig) -> JobConfig:
    """FLUX.1-dev's resolution shift: when the model options ask for it (`resolution_shift: true`) and the job
    leaves `sampler.shift` at 1, fill in the shift the diffusers pipeline would use, read from the model
    folder's JSON configs (no weights). The driver builds the time grid before any replica loads the model,
    so the shift must be known here; it is part of the run's configuration (a resumed run checks it)."""
    if job.model.name not in ("flux", "sd3") or not job.model.options.get("resolution_shift"):
        return job
    if job.sampler.shift != 1.0:
        return job  # set explicitly: the job's value wins
    from flowscale_ray.models.shift import sampler_shift

    try:
        shift = sampler_shift(job.model.name, dict(job.model.options))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            "sampler.shift",
            f"resolution_shift needs the model's configs to compute the shift ({first_line(exc)}); "
            "set sampler.shift explicitly (FLUX.1-dev at 1024x1024: 3.1582)",
        ) from None
    return dataclasses.replace(job, sampler=dataclasses.replace(job.sampler, shift=shift))
