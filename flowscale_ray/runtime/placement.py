"""Where each request of a search batch runs (pure logic, no Ray).

Particles live on the replica that created them. An `Expand` runs where its parent lives unless that
replica is loaded more than `slack` rows above the least-loaded one; then it runs on the least-loaded replica
and the parent is copied there first. `Init`s go to the least-loaded replica. Loads count velocity rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowscale_ray.search.protocol import Batch, Expand, Init


def cost(req: Init | Expand) -> int:
    """Velocity rows a request costs (an upper bound: the evaluated state plus one per later step)."""
    return 1 if isinstance(req, Init) else max(1, sum(1 for m in req.moves[1:] if not m.renoise) + 1)


@dataclass
class Assignment:
    requests: dict[int, list[Init | Expand]] = field(default_factory=dict)  # replica -> its requests
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # (pid, from replica, to replica)


def plan_batch(batch: Batch, holders: dict[int, set[int]], loads: list[float], slack: float) -> Assignment:
    """Assign a batch's requests to replicas. `holders` maps a live pid to the replicas holding it; `loads`
    (updated in place) are the rows already queued per replica."""
    if not loads:
        raise ValueError("no replicas")
    out = Assignment()
    copied: set[tuple[int, int]] = set()

    def least() -> int:
        return min(range(len(loads)), key=lambda r: (loads[r], r))

    for req in batch.inits:
        r = least()
        out.requests.setdefault(r, []).append(req)
        loads[r] += cost(req)
    for req in batch.expands:
        owners = holders.get(req.parent)
        if not owners:
            raise KeyError(f"parent {req.parent} of particle {req.pid} is not on any replica")
        home = min(owners, key=lambda r: (loads[r], r))
        target = home
        m = least()
        if loads[home] - loads[m] > slack:
            target = m
            if m not in owners and (req.parent, m) not in copied:
                out.copies.append((req.parent, home, m))
                copied.add((req.parent, m))
        out.requests.setdefault(target, []).append(req)
        loads[target] += cost(req)
    return out
