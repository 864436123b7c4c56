"""Virtual replicas: many GPU stand-ins hosted in a few processes, so that the real driver and the real Ray call
path are measured at 64-1024 replicas on a machine with a few cores.

A `VirtualHost` is an async Ray actor hosting many virtual replicas. Each keeps its own state (a `DelayReplica`:
its open tasks, its particles, its counters) and its own lock, so its calls run one at a time in arrival order,
as on a real replica (an `export` waits for the call in progress); its simulated GPU time is an `asyncio.sleep`
of `delay_s` per started micro-batch of `micro_batch` rows, so one host keeps hundreds of replicas "computing"
at once. The driver talks to a `VirtualHandle` per replica: it speaks `protocol.Replica` (`handle.run.options(
num_returns=2).remote(...)` is an actor call on the host with the replica's index in front), so `RayExecutor`
schedules virtual replicas exactly as it schedules real ones (`VirtualReplica.spawn` is the driver's seam).

`NaiveLoop` is the baseline on the same virtual replicas: no search and no placement, just a plain Ray loop that
keeps two calls of one full micro-batch in flight per replica and collects them with `ray.wait`.

`TimedScheduler` is the driver's `Scheduler` with each handler timed in the main thread's CPU time (exclusive,
by category); the benchmark runs it separately from the efficiency runs (`scale.capacity`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

import ray

from flowscale_ray.benchmark.delay import DelayReplica
from flowscale_ray.runtime.options import RuntimeOptions
from flowscale_ray.runtime.scheduler import Scheduler
from flowscale_ray.search.protocol import Batch, Init, NoiseKey

METHODS = ("ready", "pid", "run", "replay", "export", "finalize", "close", "stats")


class VirtualHost:
    """An async actor hosting virtual replicas `vids` (each a DelayReplica state with its own lock)."""

    def __init__(self, vids: Sequence[int], args: tuple, delay_s: float) -> None:
        model, sampler, reward, held_out, micro_batch = args
        self.reps = {v: DelayReplica(model, sampler, reward, held_out, micro_batch, delay_s) for v in vids}
        self.locks = {v: asyncio.Lock() for v in vids}
        self.gpu_seconds = dict.fromkeys(vids, 0.0)  # simulated GPU time (nominal delays, padding included)
        self.late_seconds = dict.fromkeys(vids, 0.0)  # sleeps past their nominal end (the host's event loop)
        self.calls: list[tuple[int, float, float, int]] = []  # (vid, start, end, rows) of each sleep, wall clock

    async def _sleep(self, vid: int, delay: float, rows: int) -> None:
        t0 = time.perf_counter()
        start = time.time()
        await asyncio.sleep(delay)
        self.gpu_seconds[vid] += delay
        self.late_seconds[vid] += max(0.0, time.perf_counter() - t0 - delay)
        self.calls.append((vid, start, start + delay, rows))

    async def timeline(self) -> list[tuple[int, float, float, int]]:
        """(vid, start, nominal end, rows) of every simulated GPU call since the last `timeline`, wall clock."""
        calls, self.calls = self.calls, []
        return calls

    async def ready(self, vid: int) -> dict[str, Any]:
        return self.reps[vid].ready()

    async def pid(self, vid: int) -> int:
        return os.getpid()

    async def run(
        self,
        vid: int,
        work: Sequence[tuple[Any, tuple]],
        opens: Sequence[tuple[Any, Any, int]] = (),
        releases: Sequence[tuple[Any, Sequence[int]]] = (),
        adopt_keys: Sequence[Any] = (),
        *adopt_states: Any,
    ) -> tuple[dict[Any, Any], None]:
        rep = self.reps[vid]
        async with self.locks[vid]:
            started = time.perf_counter()
            out, rows = rep.compute(work, opens, releases, adopt_keys, adopt_states)
            await self._sleep(vid, rep._delay(rows), rows)
            return rep.account(out, rows, time.perf_counter() - started), None

    async def replay(self, vid: int, key: Any, prompt: Any, seed: int, requests: Sequence[Any], keep: Sequence[int]):
        rep = self.reps[vid]
        async with self.locks[vid]:
            rep.prompts[key] = prompt.id
            rep.live.setdefault(key, set()).update(keep)
            await self._sleep(vid, rep._delay(len(requests)), 0)
            return len(requests)

    async def export(self, vid: int, key: Any, pids: Sequence[int]) -> list[tuple[int, None]]:
        async with self.locks[vid]:
            return self.reps[vid].export(key, pids)

    async def finalize(self, vid: int, key: Any, pids: Sequence[int], *adopt: Any) -> dict[str, Any]:
        async with self.locks[vid]:
            return self.reps[vid].finalize(key, pids, *adopt)

    async def close(self, vid: int, keys: Sequence[Any]) -> None:
        async with self.locks[vid]:
            self.reps[vid].close(keys)

    async def stats(self, vid: int) -> dict[str, Any]:
        return {
            **self.reps[vid].stats(),
            "gpu_seconds": self.gpu_seconds[vid],
            "late_seconds": self.late_seconds[vid],
        }


class _Method:
    """`handle.run` of a virtual replica: `.remote(...)` / `.options(...).remote(...)` on its host's method."""

    __slots__ = ("method", "vid")

    def __init__(self, method: Any, vid: int) -> None:
        self.method, self.vid = method, vid

    def remote(self, *args: Any) -> Any:
        return self.method.remote(self.vid, *args)

    def options(self, **options: Any) -> _Method:
        return _Method(self.method.options(**options), self.vid)


class VirtualHandle:
    """Speaks `protocol.Replica` for virtual replica `vid` of `host` (an actor handle of a VirtualHost)."""

    def __init__(self, host: Any, vid: int) -> None:
        self.host, self.vid = host, vid
        for name in METHODS:
            setattr(self, name, _Method(getattr(host, name), vid))


class VirtualReplica:
    """The driver's `worker` for virtual replicas: `spawn` spreads them round robin over `hosts` VirtualHosts."""

    delay_s: float = 0.05
    hosts: int = 2

    @classmethod
    def configured(cls, delay_s: float, hosts: int) -> type[VirtualReplica]:
        return type(f"VirtualReplica{int(delay_s * 1e6)}us", (cls,), {"delay_s": delay_s, "hosts": hosts})

    @classmethod
    def spawn(cls, args: tuple, options: RuntimeOptions) -> tuple[list[Any], list[Any]]:
        n = options.replicas
        k = max(1, min(cls.hosts, n))
        groups = [list(range(i, n, k)) for i in range(k)]
        host_cls: Any = ray.remote(VirtualHost).options(
            num_cpus=0, max_concurrency=max(1000, 8 * n), max_restarts=0, max_task_retries=0
        )
        actors = [host_cls.remote(g, args, cls.delay_s) for g in groups]
        handles: list[Any] = [None] * n
        for actor, group in zip(actors, groups, strict=True):
            for v in group:
                handles[v] = VirtualHandle(actor, v)
        return handles, actors


class NaiveLoop:
    """The baseline: per replica, `in_flight` calls of one full micro-batch (no search, no placement), collected
    with `ray.wait` and fetched with `ray.get`; a replica gets its next call as soon as one comes back."""

    def __init__(self, handles: Sequence[Any], micro_batch: int, in_flight: int = 2) -> None:
        self.handles = list(handles)
        self.in_flight = in_flight
        self.key = ("naive", 0)
        batch = Batch(inits=tuple(Init(pid, NoiseKey(0, 0, pid, 0)) for pid in range(micro_batch)))
        self.packed = batch.pack()
        self.last_sent = 0.0  # wall clock of the last call sent

    def run(self, calls_per_replica: int) -> int:
        """Make `calls_per_replica` calls on every replica; returns the rows computed."""
        from flowscale_ray.prompts import Prompt

        self.key = ("naive", self.key[1] + 1)
        opens = [(self.key, Prompt("naive", "naive"), 0)]
        left = [calls_per_replica] * len(self.handles)
        pending: dict[Any, int] = {}

        def submit(r: int, first: bool) -> None:
            left[r] -= 1
            self.last_sent = time.time()
            results, _previews = (
                self.handles[r].run.options(num_returns=2).remote([(self.key, self.packed)], opens if first else [])
            )
            pending[results] = r

        for r in range(len(self.handles)):
            for i in range(min(self.in_flight, left[r])):
                submit(r, i == 0)
        rows = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            rest = [ref for ref in pending if ref not in done]
            if rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                done += more
            for ref in done:
                r = pending.pop(ref)
                out = ray.get(ref)
                rows += sum(len(v) for k, v in out.items() if k == self.key)
                if left[r] > 0:
                    submit(r, False)
        for h in self.handles:
            h.close.remote([self.key])
        return rows


# -- the driver's CPU per round, by category ---------------------------------------------------------------------
CATEGORIES = (
    "submission",  # step calls, finalize calls, closes: Ray's remote() in the main thread (arguments pickled)
    "wait",  # ray.wait
    "deserialization",  # ray.get of a call's results
    "results",  # results back to their searches (step_returned's own work)
    "placement",  # plan_batch and queueing
    "decisions",  # the methods: generator steps, evaluations, releases (advance's own work); starting searches
    "metrics",  # the recorder (Prometheus series, totals, timeline)
)


class Clock:
    """Exclusive main-thread CPU time per category: a stack, each push/pop charges the time since the last one to
    the category on top."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)
        self.counts: dict[str, int] = {}  # calls per timed method
        self.stack: list[str] = []
        self.last = time.thread_time()

    def push(self, category: str, name: str = "") -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        now = time.thread_time()
        if self.stack:
            self.seconds[self.stack[-1]] += now - self.last
        self.last = now
        self.stack.append(category)

    def pop(self) -> None:
        now = time.thread_time()
        self.seconds[self.stack.pop()] += now - self.last
        self.last = now


def _timed(name: str, category: str) -> Any:
    base = getattr(Scheduler, name)

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        clock: Clock = self.ex.clock
        clock.push(category, name)
        try:
            return base(self, *args, **kwargs)
        finally:
            clock.pop()

    timed.__name__ = name
    return timed


_TIMED = {
    "send": "submission",
    "finalize": "submission",
    "flush_closes": "submission",
    "wait": "wait",
    "returned": "deserialization",  # minus the handlers below
    "step_returned": "results",
    "scores_returned": "results",
    "finished": "results",
    "plan": "placement",
    "advance": "decisions",
    "start_searches": "decisions",
}
TimedScheduler: type[Scheduler] = type(
    "TimedScheduler", (Scheduler,), {name: _timed(name, cat) for name, cat in _TIMED.items()}
)


class TimedRecorder:
    """A recorder whose every hook is charged to 'metrics'."""

    def __init__(self, inner: Any, clock: Clock) -> None:
        self.inner, self.clock = inner, clock

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        clock = self.clock

        def timed(*args: Any, **kwargs: Any) -> Any:
            clock.push("metrics", name)
            try:
                return method(*args, **kwargs)
            finally:
                clock.pop()

        return timed
