"""The executor a job asks for (`executor.kind`), opened and closed as one context.

`inprocess` builds the components here; `ray` connects to (or starts) Ray and hands the component specs to the
runtime's driver, which builds them on its replicas. Both satisfy `flowscale_ray.execution.Executor`.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    from flowscale_ray.runtime.sharded import ShardedExecutor

    started_here = start_ray(cfg.address)
    where = "started a local Ray" if started_here else f"connected to {cfg.address or _ray_address()}"
    drivers = f" over {cfg.drivers} drivers" if cfg.drivers > 1 else ""
    log.info(f"ray: {where}; {cfg.replicas} model replica(s){drivers}")

    def spec(c: ComponentConfig) -> ComponentSpec:
        return ComponentSpec(c.name, dict(c.options))

    try:
        args = (
            spec(job.model),
            job.sampler,
            spec(job.reward),
            spec(job.held_out) if job.held_out is not None else None,
        )
        options = RuntimeOptions.from_config(cfg)
        try:
            ray_executor: Executor
            if cfg.drivers == 1:
                ray_executor = RayExecutor(*args, options, top_k=job.output.top_k)
            else:  # one job over several drivers, each with its share of the replicas (runtime.sharded)
                share = dataclasses.replace(
                    options,
                    replicas=cfg.replicas // cfg.drivers,
                    reward_actors=cfg.reward_actors // cfg.drivers,
                    in_flight=-(-cfg.in_flight // cfg.drivers),
                )
                ray_executor = ShardedExecutor(*args, shards=cfg.drivers, options=share, top_k=job.output.top_k)
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
