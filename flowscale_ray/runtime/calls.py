"""The calls the driver has in flight, one frozen dataclass per kind (a tagged union, dispatched with `match`).

Two go to a model replica, named by its index `replica`: a `StepCall` computes queued search work (the replica's
`run`), a `FinalizeCall` takes a finished search's selected particles to t = 0 (`finalize`). Two go to a reward
actor of the pool, named by its index `actor`: a `ScoreCall` scores a step call's previews (`score`), a
`ScoreFinalCall` scores a finalized search's images (`score_final`). Reward calls keep their arguments, so that
a call whose actor died can be sent again as it was.

Closing finished searches on a replica is not tracked: it is fire and forget, and runs before that replica's
next call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowscale_ray.search.protocol import Batch


@dataclass(slots=True)
class Queued:
    """One search's share of a batch, queued for one replica (a step call carries every queued share)."""

    key: int  # the search
    batch: Batch
    copies: list[tuple[int, int]]  # (pid, source replica) to adopt before running
    rows: float = 0.0  # velocity rows it costs (placement.batch_cost)


@dataclass(frozen=True, slots=True)
class StepCall:
    """`run` on model replica `replica`: the queued work of several searches, in one call."""

    replica: int
    items: tuple[Queued, ...]
    rows: float  # velocity rows in progress: the replica's load until the call returns
    deadline: float


@dataclass(frozen=True, slots=True)
class FinalizeCall:
    """`finalize` on model replica `replica`: search `key`'s selected particles (copies come along if needed)."""

    replica: int
    key: int
    deadline: float


@dataclass(frozen=True, slots=True)
class ScoreCall:
    """`score` on reward actor `actor`: the previews of one step call, for the searches in `pids`."""

    actor: int
    args: tuple[Any, ...]  # (rows: [(key, prompt, preview rows)], previews ref): sent again if the actor dies
    pids: dict[int, list[int]]  # search key -> the particles scored, in row order
    sent: float
    deadline: float


@dataclass(frozen=True, slots=True)
class ScoreFinalCall:
    """`score_final` on reward actor `actor`: search `key`'s finalized images."""

    actor: int
    key: int
    args: tuple[Any, ...]  # (prompt, images): sent again if the actor dies
    finalized: dict[str, Any]  # the finalize output waiting for its rewards
    sent: float
    deadline: float


ModelCall = StepCall | FinalizeCall
RewardCall = ScoreCall | ScoreFinalCall
Call = ModelCall | RewardCall
