"""The executor a job asks for (`executor.kind`), opened and closed as one context.

`inprocess` builds the components here; `ray` connects to (or starts) Ray and hands the component specs to the
runtime's driver, which builds them on its replicas. Both satisfy `flowscale_ray.execution.Executor`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from flowscale_ray.config import ComponentConfig, ConfigError, JobConfig
from flowscale_ray.execution import Executor, InProcessExecutor, ParticleEngine
from flowscale_ray.logs import get_logger
from flowscale_ray.run.components import build_components

log = get_logger(__name__)


@contextlib.contextmanager
def open_executor(job: JobConfig) -> Iterator[Executor]:
    """The job's executor; closed (replicas stopped, a Ray started here shut down) when the block ends."""
    cfg = job.executor
    if cfg.kind == "inprocess":
        model, reward, held = build_components(job)
        engine = ParticleEngine(model, job.sampler, micro_batch=cfg.micro_batch)
        executor = InProcessExecutor(engine, reward, held, in_flight=cfg.in_flight, top_k=job.output.top_k)
        try:
            yield executor
        finally:
            executor.close()
        return
    import ray

    from flowscale_ray.runtime.cluster import start_ray
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeFailure, RuntimeOptions
    from flowscale_ray.runtime.messages import ComponentSpec

    started_here = start_ray(cfg.address)
    where = "started a local Ray" if started_here else f"connected to {cfg.address or _ray_address()}"
    log.info(f"ray: {where}; {cfg.replicas} model replica(s)")

    def spec(c: ComponentConfig) -> ComponentSpec:
        return ComponentSpec(c.name, dict(c.options))

    try:
        try:
            ray_executor = RayExecutor(
                spec(job.model),
                job.sampler,
                spec(job.reward),
                spec(job.held_out) if job.held_out is not None else None,
                RuntimeOptions.from_config(cfg),
                top_k=job.output.top_k,
            )
        except RuntimeFailure as exc:
            raise ConfigError("model", str(exc)) from None
        try:
            yield ray_executor
        finally:
            ray_executor.close()
    finally:
        if started_here:
            ray.shutdown()


def _ray_address() -> str:
    """The cluster that start_ray(None) joined (RAY_ADDRESS, as Ray sets it inside a Ray job)."""
    return f"the cluster at RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '')}"
