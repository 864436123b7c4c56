"""DelayReplica: a stand-in for a GPU replica whose work is a fixed delay per batch (torch-free, light).

With `micro_batch` set (the fixed model-call shape a GPU replica uses), each call sleeps the delay once per
micro-batch of velocity rows, as a GPU takes a fixed time per batch of that shape; without it, once per call.

It implements `flowscale_ray.runtime.protocol.Replica`, so the real driver schedules it exactly like a model
replica; rewards are a deterministic hash of (prompt, pid), so searches make real decisions. Used by the scaling
run of `flowscale bench` (`--delay-ms`, `--delay-batch`) to measure the driver's own limits without GPUs.

The driver builds a replica with (model, sampler, reward, held_out, micro_batch) only: `DelayReplica.with_delay`
makes a subclass with its delay built in.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

from flowscale_ray.observe.recorder import CALL_STATS
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.runtime.placement import cost  # rows (NFE) a request costs, as placement counts them
from flowscale_ray.search.protocol import Batch


class DelayReplica:
    delay_s: float = 0.05  # seconds per model call of `micro_batch` rows (or per replica call)

    @classmethod
    def with_delay(cls, delay_s: float) -> type[DelayReplica]:
        """A DelayReplica class whose replicas sleep `delay_s` (what the driver builds: it passes no delay)."""
        return type(f"DelayReplica{int(delay_s * 1e6)}us", (cls,), {"delay_s": delay_s})

    def __init__(
        self,
        model: ComponentSpec | None,
        sampler: Any,
        reward: ComponentSpec | None,
        held_out: ComponentSpec | None,
        micro_batch: int | None,
        delay_s: float | None = None,
    ) -> None:
        self.incarnation = uuid.uuid4().hex
        self.delay = self.delay_s if delay_s is None else delay_s
        self.micro_batch = micro_batch  # set: the delay is per model call of this many rows (a GPU's fixed shape)
        self.grid = sampler.grid_times()
        self.live: dict[Any, set[int]] = {}
        self.prompts: dict[Any, str] = {}
        self.busy_seconds = 0.0
        self.calls = 0
        self.nfe = 0
        self.rows: list[int] = []

    def ready(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "pid": os.getpid(), "model": "delay"}

    def pid(self) -> int:
        return os.getpid()

    def _reward(self, key: Any, pid: int) -> float:
        digest = hashlib.blake2b(f"{self.prompts.get(key, '')}:{pid}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    def run(
        self,
        work: Sequence[tuple[Any, tuple]],
        opens: Sequence[tuple[Any, Any, int]] = (),
        releases: Sequence[tuple[Any, Sequence[int]]] = (),
        adopt_keys: Sequence[Any] = (),
        *adopt_states: Any,
    ) -> tuple[dict[Any, list[tuple]], None]:
        started = time.perf_counter()
        out, rows = self.compute(work, opens, releases, adopt_keys, adopt_states)
        time.sleep(self._delay(rows))
        return self.account(out, rows, time.perf_counter() - started), None

    def compute(
        self,
        work: Sequence[tuple[Any, tuple]],
        opens: Sequence[tuple[Any, Any, int]],
        releases: Sequence[tuple[Any, Sequence[int]]],
        adopt_keys: Sequence[Any],
        adopt_states: Sequence[Any],
    ) -> tuple[dict[Any, Any], int]:
        """A call's results (per task key, ParticleResult fields as tuples) and its velocity rows; no delay."""
        for key, prompt, _seed in opens:
            self.prompts[key] = prompt.id
            self.live.setdefault(key, set())
        for key, pids in releases:
            self.live.get(key, set()).difference_update(pids)
        for key, states in zip(adopt_keys, adopt_states, strict=True):
            self.live.setdefault(key, set()).update(pid for pid, _ in states)
        out: dict[Any, Any] = {}
        rows = 0
        for key, packed in work:
            batch = Batch.unpack(packed)
            res = []
            for req in batch.inits:
                res.append((req.pid, 1, self.grid[0], self._reward(key, req.pid) if req.score else float("nan"), None))
            for exp in batch.expands:
                s = exp.moves[-1].s_to
                res.append((exp.pid, cost(exp), s, self._reward(key, exp.pid) if exp.score else float("nan"), None))
            for pid, nfe, *_ in res:  # ParticleResult fields
                self.live.setdefault(key, set()).add(pid)
                rows += nfe
            out[key] = res
        return out, rows

    def account(self, out: dict[Any, Any], rows: int, busy: float) -> dict[Any, Any]:
        """Count a call of `rows` velocity rows that kept the replica busy `busy` seconds; adds CALL_STATS."""
        self.nfe += rows
        self.rows.append(rows)
        self.busy_seconds += busy
        self.calls += 1
        count = sum(len(v) for v in out.values())
        out[CALL_STATS] = {"seconds": busy, "step_seconds": busy, "reward_seconds": 0.0, "rows": count, "nfe": rows}
        return out

    def _delay(self, rows: int) -> float:
        """Seconds a call of `rows` velocity rows takes: one delay per model call of `micro_batch` rows (padded,
        as the engine pads), or one delay per replica call when no micro-batch is set."""
        if self.micro_batch is None:
            return self.delay
        return self.delay * -(-rows // self.micro_batch)

    def replay(self, key: Any, prompt: Any, seed: int, requests: Sequence[Any], keep: Sequence[int]) -> int:
        self.prompts[key] = prompt.id
        self.live.setdefault(key, set()).update(keep)
        time.sleep(self._delay(len(requests)))
        return len(requests)

    def export(self, key: Any, pids: Sequence[int]) -> list[tuple[int, None]]:
        return [(pid, None) for pid in pids]

    def finalize(self, key: Any, pids: Sequence[int], *adopt: Any) -> dict[str, Any]:
        rewards = [self._reward(key, pid) for pid in pids]
        return {"samples": [[r] for r in rewards], "images": [[r] for r in rewards], "rewards": rewards}

    def close(self, keys: Sequence[Any]) -> None:
        for key in keys:
            self.live.pop(key, None)
            self.prompts.pop(key, None)

    def stats(self) -> dict[str, Any]:
        return {
            "incarnation": self.incarnation,
            "busy_seconds": self.busy_seconds,
            "calls": self.calls,
            "nfe": self.nfe,
            "mean_rows_per_call": sum(self.rows) / max(1, len(self.rows)),
            "live_particles": sum(len(v) for v in self.live.values()),
            "open_tasks": len(self.live),
        }
