"""Wiring for a run: the `/metrics` server (driver only, once per process), the progress display and the
RunRecorder the executors report to. The run loop (flowscale_ray.run.loop) calls `observe_run` once per run call."""

from __future__ import annotations

from typing import TextIO

from flowscale_ray.config import ConfigError, MetricsConfig
from flowscale_ray.logs import get_logger
from flowscale_ray.observe.progress import make_progress
from flowscale_ray.observe.recorder import RunRecorder

log = get_logger(__name__)
_announced: set[tuple[str, int]] = set()


def observe_run(
    cfg: MetricsConfig,
    *,
    method: str,
    model: str,
    reward: str,
    prompts: int,
    planned_nfe: int,
    replicas: int,
    stream: TextIO | None = None,
) -> RunRecorder:
    """A RunRecorder for one run call. With `cfg.port` set, serves Prometheus metrics on cfg.host (loopback by
    default) and logs the URL the first time."""
    serving = cfg.port is not None
    if serving:
        from flowscale_ray.observe.metrics import serve

        try:
            port = serve(cfg.port, cfg.host)  # type: ignore[arg-type]
        except OSError as exc:
            raise ConfigError("metrics.port", f"cannot serve on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        if (cfg.host, port) not in _announced:
            _announced.add((cfg.host, port))
            host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
            log.info(f"metrics: serving Prometheus metrics at http://{host}:{port}/metrics")
    progress = make_progress(cfg.progress, cfg.log_interval_s, stream)
    return RunRecorder(
        method,
        model,
        reward,
        prompts=prompts,
        planned_nfe=planned_nfe,
        replicas=replicas,
        prometheus=serving,
        progress=progress,
        timeline_interval_s=cfg.timeline_interval_s,
    )
