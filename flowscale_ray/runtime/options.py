"""The runtime's settings (RuntimeOptions), its one failure type (RuntimeFailure), and how it names a cause."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowscale_ray.errors import first_line

if TYPE_CHECKING:
    from flowscale_ray.config import ExecutorConfig


class RuntimeFailure(RuntimeError):
    """The run cannot continue (a replica keeps dying, or failed to start)."""


@dataclass(frozen=True)
class RuntimeOptions:
    replicas: int = 1
    in_flight: int = 8
    micro_batch: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    call_timeout_s: float = 600.0
    start_timeout_s: float = 300.0
    max_restarts: int = 3
    slack: float | None = None  # rows a parent's replica may be above the least-loaded one; None: micro_batch or 8
    reward_actors: int = 0  # 0: rewards run inside the model replicas; n: a pool of n reward actors
    pipeline: int = 2  # step calls in progress per replica when micro_batch is set (1: one call at a time)
    reward_num_cpus: float = 1.0
    reward_num_gpus: float = 0.0

    @classmethod
    def from_config(cls, executor: ExecutorConfig) -> RuntimeOptions:
        """The options a job's `executor:` section asks for (its Ray-side fields; the rest keep their defaults)."""
        return cls(
            replicas=executor.replicas,
            in_flight=executor.in_flight,
            micro_batch=executor.micro_batch,
            num_cpus=executor.num_cpus,
            num_gpus=executor.num_gpus,
            call_timeout_s=executor.call_timeout_s,
            max_restarts=executor.max_restarts,
            reward_actors=executor.reward_actors,
        )


def failure_cause(exc: BaseException) -> str:
    """The first line of the underlying error (an actor's __init__ exception, a task's exception)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return first_line(cause)
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if "Error" in line or "error" in line:
            return line.strip()
    return text[0] if text else type(exc).__name__
