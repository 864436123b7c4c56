"""A run's identity: what determines its rows (hashed; a resumed run must match it) and the whole job as
recorded in `_run.json` and the manifest. Both redacted: no secret is hashed or written."""

from __future__ import annotations

import platform
from dataclasses import asdict
from importlib import metadata
from typing import Any

from flowscale_ray.config import JobConfig, PromptFileConfig
from flowscale_ray.prompts import Prompt


def describe_job(job: JobConfig, prompts: list[Prompt]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity, config) of a run of `job` over `prompts`."""
    from flowscale_ray.io.prompts import prompts_digest
    from flowscale_ray.io.schema import SCHEMA_VERSION
    from flowscale_ray.io.storage import Redactor, describe_storage

    redact = Redactor.for_storage(job.storage)
    out = job.output
    identity = {
        "schema_version": SCHEMA_VERSION,
        "seed": job.seed,
        "model": asdict(job.model),
        "sampler": asdict(job.sampler),
        "method": job.method.build().settings(),
        "reward": asdict(job.reward),
        "held_out": asdict(job.held_out) if job.held_out is not None else None,
        "budget": asdict(job.budget),
        "prompts": {"count": len(prompts), "digest": prompts_digest(prompts)},
        "output": {
            "save_images": out.save_images,
            "shard_size": out.shard_size,
            "row_group_size": out.row_group_size,
            "top_k": out.top_k,
            "min_reward": out.min_reward,
            "min_held_out": out.min_held_out,
        },
    }
    source = asdict(job.prompts) if isinstance(job.prompts, PromptFileConfig) else {"inline": len(prompts)}
    config = {
        "name": job.name,
        "run_id": job.run_id,
        **{k: v for k, v in identity.items() if k not in ("prompts", "output")},
        "prompts": {**source, **identity["prompts"]},
        "executor": asdict(job.executor),
        "output": asdict(out),
        "storage": describe_storage(job.storage),
    }
    return redact.value(identity), redact.value(config)


def versions() -> dict[str, str]:
    """The versions that made a run (recorded in its manifest)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("flowscale-ray", "torch", "numpy", "pyarrow", "fsspec", "s3fs"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
