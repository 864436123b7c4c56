"""What a search method says and hears. Methods decide; executors compute.

A method is a generator. It yields a `Batch` of requests and receives a dict pid -> `Evaluation`, one for
every particle the batch created; it finally returns a `SearchOutcome` naming the selected particle.

    Init(pid, noise)                 a fresh particle x ~ N(0, I) at grid[0], evaluated
    Expand(pid, parent, moves)       copy the parent, apply the moves in order, evaluate the result
    Move(s_to, noise)                one sampler step (ODE or SDE per the job's sampler; ODE ignores noise)
    Move(s_to, noise, renoise=True)  the forward (noising) kernel to a later time s_to (Search over Paths)

"Evaluate" means: compute the velocity at the particle's state (1 NFE; it is cached and reused as the drift
of the particle's next step, so a kept particle never pays twice), its x0 estimate, decode it and score it
with the reward. A step from a state whose velocity is not cached first evaluates that velocity (1 NFE).
Every velocity evaluation of one particle is one NFE, and `Evaluation.nfe` reports exactly what was spent.

Noise identity: the executor draws each noise from a generator seeded by (run seed, prompt id, *NoiseKey),
so results are independent of batching. Methods must give every draw a distinct key.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

STREAM_INIT = 0
STREAM_STEP = 1
STREAM_RENOISE = 2
STREAM_DECISION = 3  # method-side randomness (e.g. SMC resampling)

# NFE an executor charges for one reward gradient of reward-gradient guidance (core.guidance): the forward pass
# with autograd (1) and the backward pass (2). Part of the NFE rule, so the plans (search.plan) charge it too.
GUIDED_STEP_NFE = 3


@dataclass(frozen=True)
class NoiseKey:
    chain: int
    step: int
    candidate: int
    stream: int = STREAM_STEP


@dataclass(frozen=True)
class Move:
    s_to: float
    noise: NoiseKey | None = None
    renoise: bool = False


@dataclass(frozen=True)
class Init:
    pid: int
    noise: NoiseKey
    score: bool = True  # False: skip the reward (Evaluation.reward is NaN); the velocity is still computed


@dataclass(frozen=True)
class Expand:
    pid: int
    parent: int
    moves: tuple[Move, ...]
    score: bool = True


@dataclass(frozen=True)
class Batch:
    inits: tuple[Init, ...] = ()
    expands: tuple[Expand, ...] = ()
    release: tuple[int, ...] = ()  # freed after this batch is computed; never referenced again

    def __len__(self) -> int:
        return len(self.inits) + len(self.expands)

    def pack(self) -> tuple:
        """A plain-tuple encoding for sending between processes (pickling thousands of frozen dataclasses
        costs tens of microseconds each; tuples cost almost nothing). `Batch.unpack` inverts it."""

        def key(k: NoiseKey | None) -> tuple | None:
            return None if k is None else (k.chain, k.step, k.candidate, k.stream)

        return (
            tuple((i.pid, key(i.noise), i.score) for i in self.inits),
            tuple(
                (e.pid, e.parent, tuple((m.s_to, key(m.noise), m.renoise) for m in e.moves), e.score)
                for e in self.expands
            ),
            self.release,
        )

    @staticmethod
    def unpack(data: tuple) -> Batch:
        inits, expands, release = data

        def key(k: tuple | None) -> NoiseKey | None:
            return None if k is None else NoiseKey(*k)

        return Batch(
            inits=tuple(Init(pid, key(nk), sc) for pid, nk, sc in inits),  # type: ignore[arg-type]
            expands=tuple(
                Expand(pid, parent, tuple(Move(s, key(nk), rn) for s, nk, rn in moves), sc)
                for pid, parent, moves, sc in expands
            ),
            release=tuple(release),
        )


@dataclass(frozen=True)
class Evaluation:
    pid: int
    reward: float
    s: float  # time of the evaluated state
    nfe: int  # velocity evaluations spent creating this particle


@dataclass
class StepRecord:
    """One decision of a method: what metrics, traces and output rows are made from."""

    step: int
    s: float
    nfe: int  # spent in this decision
    candidates: int
    best_reward: float
    accepted: int = 0  # RBF: candidates accepted by strict improvement
    rollover: int = 0  # RBF: quota rolled over to the next step
    resampled: bool = False  # SMC
    ess: float | None = None  # SMC
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchOutcome:
    best: int  # pid of the selected particle
    reward: float  # its reward at its last evaluation
    nfe: int  # total velocity evaluations the method spent
    records: list[StepRecord]
    selected: list[int] = field(default_factory=list)  # top particles, best first (for top-k curation)


@dataclass(frozen=True)
class SearchContext:
    """What a method knows about the run: the time grid and the NFE budget, nothing about the model."""

    grid: tuple[float, ...]  # s_0 = 1 > ... > s_M = 0

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    @property
    def search_times(self) -> tuple[float, ...]:
        """Grid times at which particles are evaluated: s_0 .. s_{M-1}. The last move to 0 is the final step."""
        return self.grid[:-1]


SearchGenerator = Generator[Batch, dict[int, Evaluation], SearchOutcome]


class PidCounter:
    """Particle ids unique within one search."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        pid = self._next
        self._next += 1
        return pid
