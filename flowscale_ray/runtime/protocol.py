"""What the driver calls on a model replica (remotely), as a Protocol.

Two classes implement it: the production `ReplicaWorker` (runtime/replica.py) and the benchmarks' GPU stand-in
`DelayReplica` (flowscale_ray/benchmark/delay.py); a test checks that both have every method with a compatible
signature. A replica class is built with `(model, sampler, reward, held_out, micro_batch)`: the model and
sampler to host, the reward and held-out reward to run inside it (None: a reward actor scores its previews),
and the fixed model-call shape (None: one model call per batch, whatever its size).

Every call to one replica runs in the order the driver sent it (Ray's order for one caller and one actor), so a
`close` sent after a `run` runs after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from flowscale_ray.prompts import Prompt
from flowscale_ray.search.protocol import Expand, Init


@runtime_checkable
class Replica(Protocol):
    def ready(self) -> dict[str, Any]:
        """{"incarnation": a fresh id per process, "pid": the process id, "model": the model id}."""
        ...

    def pid(self) -> int:
        """The process id (tests kill a replica with it)."""
        ...

    def run(
        self,
        work: Sequence[tuple[Any, tuple]],
        opens: Sequence[tuple[Any, Prompt, int]] = (),
        releases: Sequence[tuple[Any, Sequence[int]]] = (),
        adopt_keys: Sequence[Any] = (),
        *adopt_states: Any,
    ) -> tuple[dict[Any, Any], Any]:
        """Open tasks (key, prompt, seed), apply releases (key, pids), adopt exported particle copies (one entry of
        `adopt_states` per key of `adopt_keys`), then compute `work` (key, Batch.pack()). Returns (per task key,
        the ParticleResult fields of each evaluated particle as a plain tuple, plus observe.recorder.CALL_STATS:
        the call's figures; the call's previews stacked, or None when the reward runs in the replica)."""
        ...

    def replay(
        self, key: Any, prompt: Prompt, seed: int, requests: Sequence[Init | Expand], keep: Sequence[int]
    ) -> int:
        """Rebuild particles `keep` from their lineage (`requests`, parents first); returns the NFE it spent."""
        ...

    def export(self, key: Any, pids: Sequence[int]) -> list[tuple[int, Any]]:
        """Copies of particles, for another replica to adopt."""
        ...

    def finalize(self, key: Any, pids: Sequence[int], *adopt: Any) -> dict[str, Any]:
        """Adopt copies, take `pids` to t = 0: {"samples", "images", and "rewards", "held_out" when scored here}."""
        ...

    def close(self, keys: Sequence[Any]) -> None:
        """Drop these tasks and all their particles."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters: incarnation, busy_seconds, calls, nfe, live_particles, open_tasks (and more)."""
        ...
