"""A job with `compare_with`: each baseline method runs as its own run (`<run_id>-<method>`) on the same prompts
and seeds, then the job itself; the results are printed side by side and, for a local output, drawn as one row
of samples per method (`compare.png`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flowscale_ray.config import JobConfig
from flowscale_ray.logs import get_logger
from flowscale_ray.rewards import build_reward
from flowscale_ray.run.components import build
from flowscale_ray.run.loop import RunReport, run_job
from flowscale_ray.run.tables import comparison_table

log = get_logger(__name__)


def run_with_baselines(job: JobConfig, base_dir: Path | None = None) -> list[RunReport]:
    """Run the job's baselines, then the job; returns the reports, the job's own last."""
    reports = []
    for b in job.compare_with:
        sub = dataclasses.replace(
            job, method=b, compare_with=(), output=dataclasses.replace(job.output, run_id=f"{job.run_id}-{b.name}")
        )
        log.info(f"--- baseline {b.name} ---")
        reports.append(run_job(sub, base_dir))
    if job.compare_with:
        log.info(f"--- {job.method.name} ---")
    reports.append(run_job(job, base_dir))
    if job.compare_with:
        names = [b.name for b in job.compare_with] + [job.method.name]
        reward = build("reward", build_reward, job.reward.name, dict(job.reward.options))
        log.info(comparison_table(names, [r.preview for r in reports], reward))
        if "://" not in job.output.dir and all(r.preview for r in reports):
            _contact_sheet(job, names, reports)
    return reports


def _contact_sheet(job: JobConfig, names: list[str], reports: list[RunReport]) -> None:
    from flowscale_ray.images import contact_sheet, save_png

    cols = len(reports[-1].preview)
    images = [res.image for r in reports for res in sorted(r.preview, key=lambda x: x.prompt.id)[:cols]]
    if images and images[0].ndim == 3 and images[0].shape[0] in (1, 3):
        path = Path(job.output.dir) / job.run_id / "compare.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(contact_sheet(images, columns=cols), path, scale=3)
        log.info(f"contact sheet (one row per method: {', '.join(names)}): {path}")
