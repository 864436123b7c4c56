"""ShardedExecutor: one job over K drivers, for clusters larger than one driver can feed (docs/runtime.md).

Each shard is a `DriverShard` actor running its own `RayExecutor` with its own replicas (`options.replicas`
each). A prompt goes to shard `blake2b(prompt id) mod K`, always the same one for a given K. The results are
the same for any K (every noise draw is keyed by run seed and prompt id; a shard is one more replica layout),
and `run` yields them as the shards return them, so a caller (the run loop) stays the only writer. Each shard's
runtime hooks (NFE, replica calls and restarts: metrics and progress) travel with its results and are replayed on
this executor's recorder, the replicas named `<shard>.<replica>`.

`run` splits its tasks by shard up front (the run loop hands an executor one block of prompts at a time) and
each shard streams its results back (one streaming call per shard). Feeding shards lazily needs a second
thread in the shard actor; a first try at that hung and was left out for now.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ray

from flowscale_ray.execution.tasks import SearchTask, TaskResult
from flowscale_ray.observe.recorder import NULL_RECORDER, CallStats, Recorder
from flowscale_ray.runtime.options import RuntimeFailure, RuntimeOptions, failure_cause
from flowscale_ray.search.protocol import SearchContext


def shard_of(prompt_id: str, shards: int) -> int:
    """The shard a prompt belongs to (stable across processes and runs)."""
    digest = hashlib.blake2b(prompt_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


class Forwarded(Recorder):
    """A shard's recorder: keeps the runtime's hooks (NFE, replica calls, reward calls, restarts) to be replayed
    by the caller's recorder, with the replica named `<shard>.<replica>`."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.events: list[tuple[str, tuple]] = []

    def batch_evaluated(self, nfe: int, rewards: Sequence[float]) -> None:
        self.events.append(("batch_evaluated", (nfe, list(rewards))))

    def replica_call(self, replica: int | str, stats: CallStats) -> None:
        self.events.append(("replica_call", (f"{self.shard}.{replica}", stats)))

    def reward_call(self, replica: int | str, seconds: float) -> None:
        self.events.append(("reward_call", (f"{self.shard}.{replica}", seconds)))

    def replica_restart(self, replica: int | str, kind: str = "model") -> None:
        self.events.append(("replica_restart", (f"{self.shard}.{replica}", kind)))

    def drain(self) -> list[tuple[str, tuple]]:
        events, self.events = self.events, []
        return events


def replay(events: list[tuple[str, tuple]], recorder: Recorder) -> None:
    """Apply a shard's recorded hooks to `recorder`."""
    for name, args in events:
        getattr(recorder, name)(*args)


class DriverShard:
    """A Ray actor hosting one `RayExecutor`; `run` streams (recorded hooks, result) pairs back."""

    def __init__(self, args: tuple, kwargs: dict[str, Any], shard: int = 0) -> None:
        from flowscale_ray.runtime.driver import RayExecutor

        self.ex = RayExecutor(*args, **kwargs)
        self.recorder = self.ex.recorder = Forwarded(shard)

    def ready(self) -> str:
        return str(self.ex.model_id)

    def discard_unfinished(self) -> None:
        self.ex.discard_unfinished()

    def run(self, tasks: list[SearchTask]) -> Iterator[tuple[list, TaskResult | None]]:
        for result in self.ex.run(tasks):
            yield self.recorder.drain(), result
        yield self.recorder.drain(), None  # what was recorded after the last result

    def close(self) -> None:
        self.ex.close()


class ShardedExecutor:
    """Implements `flowscale_ray.execution.Executor` over `shards` drivers; takes RayExecutor's arguments
    (`options` per shard)."""

    def __init__(self, *args: Any, shards: int = 2, options: RuntimeOptions | None = None, **kwargs: Any) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.options = options or RuntimeOptions()
        self.context = SearchContext(grid=args[1].grid_times())  # args: (model, sampler, reward, ...)
        self.recorder: Recorder = NULL_RECORDER  # the shards' runtime hooks are replayed here as results arrive
        # A shard that dies (its process, its node) is restarted by Ray with fresh replicas, up to max_restarts
        # times; the searches it had in flight fail and the run loop runs them again (runs are deterministic).
        cls: Any = ray.remote(DriverShard).options(num_cpus=0, max_restarts=self.options.max_restarts)
        self.shards = [cls.remote(args, {**kwargs, "options": self.options}, i) for i in range(shards)]
        try:
            self._model_id = ray.get([s.ready.remote() for s in self.shards], timeout=self.options.start_timeout_s)[0]
        except Exception as exc:
            self.close()
            raise RuntimeFailure(f"a driver shard failed to start: {failure_cause(exc)}") from None

    def run(self, tasks: Iterable[SearchTask]) -> Iterator[TaskResult]:
        """Yield one TaskResult per task, as the shards finish them. The tasks are split by prompt id up front
        (one list per shard: the run loop hands an executor one block of prompts at a time)."""
        k = len(self.shards)
        split: list[list[SearchTask]] = [[] for _ in range(k)]
        for task in tasks:
            split[shard_of(task.prompt.id, k)].append(task)
        streams = {
            i: self.shards[i].run.options(num_returns="streaming").remote(part) for i, part in enumerate(split) if part
        }
        while streams:
            ready, _ = ray.wait(list(streams.values()), num_returns=1)
            for i, gen in list(streams.items()):
                if not any(gen is r for r in ready):
                    continue
                try:
                    ref = next(gen)
                except StopIteration:
                    del streams[i]
                    continue
                try:
                    events, result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # a search raised in a shard: its own error
                    cause = getattr(exc, "cause", None)
                    raise (cause if isinstance(cause, Exception) else exc) from None
                except ray.exceptions.RayActorError as exc:
                    raise RuntimeFailure(f"driver shard {i} died: {failure_cause(exc)}") from None
                replay(events, self.recorder)
                if result is not None:
                    yield result

    @property
    def model_id(self) -> str:
        return self._model_id

    def discard_unfinished(self) -> None:
        """Drop every shard's unfinished searches (runs after a shard's `run` call in progress, if any, ends; a
        shard that died was restarted without any, and is waited for here)."""
        deadline = time.monotonic() + self.options.start_timeout_s + self.options.call_timeout_s
        for i, shard in enumerate(self.shards):
            while True:
                try:
                    ray.get(shard.discard_unfinished.remote(), timeout=self.options.call_timeout_s)
                    break
                except ray.exceptions.ActorUnavailableError:  # restarting: its __init__ starts fresh replicas
                    if time.monotonic() > deadline:
                        raise RuntimeFailure(f"driver shard {i} did not come back after dying") from None
                    time.sleep(0.2)
                except ray.exceptions.RayActorError as exc:  # out of restarts
                    raise RuntimeFailure(f"driver shard {i} died for good: {failure_cause(exc)}") from None

    def close(self) -> None:
        for s in self.shards:
            with contextlib.suppress(Exception):  # a dead shard has nothing left to close
                ray.get(s.close.remote(), timeout=60)
            ray.kill(s, no_restart=True)
        self.shards = []
