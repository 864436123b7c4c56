"""RayExecutor: the central driver. Many prompts' searches in flight, their requests pooled and sharded over
model replicas, decisions made centrally by the methods, failures recovered by replaying lineage.

The executor owns what lives as long as it does: the model replicas (`protocol.Replica`, built from `worker`)
and their restart counts, the optional reward actors (`reward_pool.RewardPool`), task keys, metrics. Each
`run` drives a `scheduler.Scheduler`, which holds that run's state and handles its events (see there for the
loop, placement and recovery). The calls in flight are `calls.StepCall`, `FinalizeCall`, `ScoreCall` and
`ScoreFinalCall`.

Faults: every call has a deadline. A replica that dies or misses its deadline is restarted by Ray (killed
first if it hung); the particles it held are rebuilt on it from their recorded lineage (same noise keys, so
bit-identical), and the work it lost is sent again. Results equal a run without the fault. A replica that
fails more than `max_restarts` times fails the run with a clear message.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution.tasks import SearchTask, TaskResult
from flowscale_ray.observe.recorder import NULL_RECORDER, Recorder
from flowscale_ray.rewards.base import charge_for
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.runtime.options import RuntimeFailure, RuntimeOptions, failure_cause
from flowscale_ray.runtime.replica import ReplicaWorker
from flowscale_ray.runtime.reward_pool import RewardPool
from flowscale_ray.runtime.scheduler import Scheduler
from flowscale_ray.search.protocol import SearchContext

__all__ = ["RayExecutor", "RuntimeFailure", "RuntimeOptions"]

log = logging.getLogger("flowscale_ray.runtime")


class RayExecutor:
    """Implements `flowscale_ray.execution.Executor` on a Ray cluster."""

    scheduler_class: type[Scheduler] = Scheduler  # one per run (the benchmarks time an instrumented subclass)

    def __init__(
        self,
        model: ComponentSpec,
        sampler: SamplerSpec,
        reward: ComponentSpec,
        held_out: ComponentSpec | None = None,
        options: RuntimeOptions | None = None,
        worker: type = ReplicaWorker,
        top_k: int = 1,
    ) -> None:
        """`worker`: the replica class, built with (model, sampler, reward, held_out, micro_batch) and speaking
        `protocol.Replica` (ReplicaWorker; the benchmarks pass a GPU stand-in). A worker with a `spawn(args,
        options)` class method places its replicas itself: it returns (handles speaking `protocol.Replica`, the
        actors to kill on `close`), as the benchmarks' virtual replicas do (many replicas in a few processes)."""
        if not ray.is_initialized():
            raise RuntimeFailure("Ray is not initialised: call ray.init() (flowscale run does) first")
        self.options = opts = options or RuntimeOptions()
        self.top_k = top_k
        self._next_key = 0  # task keys are unique for the executor's life, across run() calls
        if opts.replicas < 1 or opts.in_flight < 1:
            raise ValueError("replicas and in_flight must be >= 1")
        self.sampler = sampler
        self.context = SearchContext(grid=sampler.grid_times())
        separate = opts.reward_actors > 0
        args = (model, sampler, None if separate else reward, None if separate else held_out, opts.micro_batch)
        spawn = getattr(worker, "spawn", None)
        self.replicas: list[Any]  # actor handles (or handles that speak for a replica hosted in a shared actor)
        if spawn is not None:
            self.replicas, self._actors = spawn(args, opts)
        else:
            cls: Any = ray.remote(worker).options(
                num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_restarts=opts.max_restarts, max_task_retries=0
            )
            self.replicas = [cls.remote(*args) for _ in range(opts.replicas)]
            self._actors = list(self.replicas)
        self.incarnations = self._wait_ready(range(opts.replicas))
        self.model_id = self._model_id
        self.restarts = [0] * opts.replicas
        self.rewards = RewardPool(reward, held_out, opts)  # empty unless reward_actors > 0
        self.charge = charge_for(reward.name, dict(reward.options))  # verifier calls of a reward call's scores
        self.slack = opts.slack if opts.slack is not None else float(opts.micro_batch or 8)
        self.metrics: dict[str, Any] = {"rounds": 0, "replayed_nfe": 0, "restarts": 0, "copies": 0, "calls": 0}
        self.recorder: Recorder = NULL_RECORDER  # metrics and progress hooks (flowscale_ray.observe)
        self._unfinished: set[Scheduler] = set()  # runs not yet finished or discarded
        gc.freeze()  # libraries loaded so far live forever: keep them out of the driver's GC scans

    # -- the Executor contract -------------------------------------------------------------------------------
    def run(self, tasks: Iterable[SearchTask]) -> Iterator[TaskResult]:
        """Yield one TaskResult per task, in completion order, pulling tasks lazily. If the caller stops early
        or an error escapes (a search that raises, a RuntimeFailure), the unfinished searches are discarded
        (closed on the replicas), so `run` can be called again."""
        s = self.scheduler_class(self, tasks)
        self._unfinished.add(s)
        try:
            while True:
                s.start_searches()
                if s.done:
                    return
                s.plan_ready()
                s.send_to_idle_replicas()
                if not s.calls:
                    continue
                done = s.wait()
                if not done:
                    s.deadlines_passed()
                    continue
                for ref in done:
                    result = s.returned(ref)
                    if result is not None:
                        yield result
                s.flush_closes()
        finally:
            self._discard(s)

    def discard_unfinished(self) -> None:
        """Drop every search cut short (by an exception out of `run`, or a `run` left suspended): close it on
        the replicas, releasing its particles, and forget its calls in flight. `run` discards its own searches
        when it ends early, so this is needed only for a `run` generator still held unfinished; it is safe to
        call at any time no `run` is being iterated."""
        for s in list(self._unfinished):
            self._discard(s)

    def close(self) -> None:
        """Discard unfinished searches and stop every replica and reward actor."""
        self.discard_unfinished()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self.replicas, self._actors = [], []
        self.rewards.shutdown()

    shutdown = close  # the name before the Executor contract

    def stats(self) -> list[dict[str, Any]]:
        """Each replica's counters (`protocol.Replica.stats`)."""
        return ray.get([r.stats.remote() for r in self.replicas], timeout=self.options.call_timeout_s)

    # -- used by the scheduler -------------------------------------------------------------------------------
    def new_key(self) -> int:
        key, self._next_key = self._next_key, self._next_key + 1
        return key

    def kill_replica(self, r: int) -> None:
        """Kill a replica that missed its deadline; Ray restarts it."""
        ray.kill(self.replicas[r], no_restart=False)

    def replica_failed(self, r: int) -> None:
        """Count a failure of replica r; fail the run past `max_restarts`."""
        self.restarts[r] += 1
        self.metrics["restarts"] += 1
        self.recorder.replica_restart(r, "model")
        if self.restarts[r] > self.options.max_restarts:
            raise RuntimeFailure(
                f"replica {r} failed {self.restarts[r]} times (max_restarts={self.options.max_restarts}); giving up. "
                "Check the replica's log for the cause (out of memory, a crashing model, a broken GPU)."
            )
        log.warning(
            "replica %d died (failure %d of at most %d); rebuilding its particles",
            r,
            self.restarts[r],
            self.options.max_restarts,
        )

    def wait_restarted(self, r: int) -> None:
        """Poll a restarting replica until its new incarnation answers (Ray re-runs its constructor)."""
        deadline = time.monotonic() + self.options.start_timeout_s
        while True:
            try:
                info = ray.get(self.replicas[r].ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                self.incarnations[r] = info["incarnation"]
                return
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise RuntimeFailure(
                        f"replica {r} did not come back within {self.options.start_timeout_s:.0f}s"
                    ) from None
                time.sleep(0.2)
            except GetTimeoutError:
                raise RuntimeFailure(
                    f"replica {r} did not come back within {self.options.start_timeout_s:.0f}s"
                ) from None
            except (ActorDiedError, RayActorError, RayTaskError) as exc:
                raise RuntimeFailure(f"replica {r} could not be restarted: {failure_cause(exc)}") from None

    # -- internals -------------------------------------------------------------------------------------------
    def _discard(self, s: Scheduler) -> None:
        s.discard()
        self._unfinished.discard(s)

    def _wait_ready(self, indices: Iterable[int]) -> list[str]:
        indices = list(indices)
        refs = [self.replicas[i].ready.remote() for i in indices]
        try:
            infos = ray.get(refs, timeout=self.options.start_timeout_s)
        except GetTimeoutError:
            raise RuntimeFailure(
                f"model replicas did not start within {self.options.start_timeout_s:.0f}s "
                "(not enough resources for them, or a model that takes too long to load?)"
            ) from None
        except (RayActorError, RayTaskError) as exc:
            raise RuntimeFailure(f"a model replica failed to start: {failure_cause(exc)}") from None
        self._model_id = infos[0]["model"]
        return [i["incarnation"] for i in infos]
