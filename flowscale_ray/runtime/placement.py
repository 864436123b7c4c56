"""Where each request of a search batch runs (pure logic, no Ray).

Particles live on the replica that created them. An `Expand` runs where its parent lives unless that
replica is loaded more than `slack` rows plus `tolerance` times the least-loaded one's load above the
least-loaded one; then it runs on the least-loaded replica and the parent is copied there first. `Init`s go
to the least-loaded replica, together, under the same rule (so a search's particles start on one replica).
Loads count velocity rows (queued and in progress).

The relative tolerance keeps a steady state where every replica is busy from shuffling particles: loads
there differ by a fraction of a call's rows, and a copy costs more than it saves (the parent's export waits for
its replica's current call, and a search whose batch is split waits for the slowest part). A wide batch on an
otherwise idle cluster (one prompt's 50 candidates, the other replicas at 0) still spreads.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from flowscale_ray.search.protocol import Batch, Expand, Init


def cost(req: Init | Expand) -> int:
    """Velocity rows a request costs (an upper bound: the evaluated state plus one per later step)."""
    return 1 if isinstance(req, Init) else max(1, sum(1 for m in req.moves[1:] if not m.renoise) + 1)


def batch_cost(batch: Batch) -> int:
    """Velocity rows a batch costs (see `cost`)."""
    return sum(cost(req) for req in batch.inits) + sum(cost(req) for req in batch.expands)


class Loads:
    """Rows queued or in progress per replica, kept up to date by the driver (not rebuilt every pass), with the
    least-loaded replica (lowest load, then lowest index) found in O(log n) from a lazy heap: every update pushes
    an entry and entries whose load is no longer current are dropped when they reach the top."""

    __slots__ = ("heap", "values")

    def __init__(self, values: list[float]) -> None:
        self.values = [float(v) for v in values]
        self.heap = [(v, r) for r, v in enumerate(self.values)]
        heapq.heapify(self.heap)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, r: int) -> float:
        return self.values[r]

    def __setitem__(self, r: int, value: float) -> None:
        self.values[r] = value
        if len(self.heap) > 4 * len(self.values) + 64:  # mostly stale entries: rebuild
            self.heap = [(v, i) for i, v in enumerate(self.values)]
            heapq.heapify(self.heap)
        else:
            heapq.heappush(self.heap, (value, r))

    def least(self) -> int:
        heap, values = self.heap, self.values
        while True:
            v, r = heap[0]
            if values[r] == v:
                return r
            heapq.heappop(heap)


@dataclass
class Assignment:
    requests: dict[int, list[Init | Expand]] = field(default_factory=dict)  # replica -> its requests
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, from replica, to replica)
    rows: dict[int, float] = field(default_factory=dict)  # replica -> velocity rows of its requests

    def place(self, r: int, req: Init | Expand, loads: list[float] | Loads) -> None:
        rows = cost(req)
        self.requests.setdefault(r, []).append(req)
        self.rows[r] = self.rows.get(r, 0.0) + rows
        loads[r] += rows


def plan_batch(
    batch: Batch, holders: dict[int, set[int]], loads: list[float] | Loads, slack: float, tolerance: float = 0.5
) -> Assignment:
    """Assign a batch's requests to replicas. `holders` maps a live pid to the replicas holding it; `loads`
    (updated in place) are the rows already queued or in progress per replica (a list, or `Loads`, which finds
    the least-loaded replica without a scan: the same choice)."""
    if not loads:
        raise ValueError("no replicas")
    out = Assignment()
    copied: set[tuple[int, int]] = set()
    least: int | None = None  # the least-loaded replica; only a placement on it can change which one that is
    least_of = loads.least if isinstance(loads, Loads) else None

    def lightest() -> int:
        nonlocal least
        if least_of is not None:
            return least_of()
        if least is None:
            least = min(range(len(loads)), key=lambda r: (loads[r], r))
        return least

    def overloaded(home: int, m: int) -> bool:
        return loads[home] - loads[m] > slack + tolerance * loads[m]

    def place(r: int, req: Init | Expand) -> None:
        nonlocal least
        out.place(r, req, loads)
        if r == least:
            least = None

    home_of_inits: int | None = None
    for req in batch.inits:  # together on the least-loaded replica, spilling over only when it gets overloaded
        m = lightest()
        if home_of_inits is None or overloaded(home_of_inits, m):
            home_of_inits = m
        place(home_of_inits, req)
    for exp in batch.expands:
        owners = holders.get(exp.parent)
        if not owners:
            raise KeyError(f"parent {exp.parent} of particle {exp.pid} is not on any replica")
        home = min(owners, key=lambda r: (loads[r], r)) if len(owners) > 1 else next(iter(owners))
        target = home
        m = lightest()
        if overloaded(home, m):
            target = m
            if m not in owners and (exp.parent, m) not in copied:
                out.copies.append((exp.parent, home, m))
                copied.add((exp.parent, m))
        place(target, exp)
    return out
