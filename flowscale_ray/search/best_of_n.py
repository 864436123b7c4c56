"""Best-of-N: N independent trajectories, keep the one with the highest final reward (spec 2.1).

NFE = N x steps: each trajectory evaluates its velocity at s_0 .. s_{M-1}; the final step to 0 reuses the
last one. Only the final states are scored. N = 1 is plain sampling (the 'base' method).
"""

from __future__ import annotations

from dataclasses import dataclass

from flowscale_ray.search.base import SearchMethod, per_round, positive, rank_desc, spent
from flowscale_ray.search.protocol import (
    STREAM_INIT,
    Batch,
    Expand,
    Init,
    Move,
    NoiseKey,
    PidCounter,
    SearchContext,
    SearchGenerator,
    SearchOutcome,
    StepRecord,
)


@dataclass(frozen=True)
class BestOfNConfig:
    n: int = 50

    def __post_init__(self) -> None:
        positive("n", self.n)


class BestOfN(SearchMethod):
    name = "bon"
    Config = BestOfNConfig

    def planned_nfe(self, ctx: SearchContext) -> int:
        return self.config.n * ctx.steps

    def with_budget(self, nfe: int, ctx: SearchContext) -> SearchMethod:
        """Best-of-n with as many trajectories as `nfe` pays for."""
        return BestOfN(BestOfNConfig(n=per_round(nfe, ctx.steps, "trajectory")))

    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        n, times = self.config.n, ctx.search_times
        new_pid = PidCounter()
        single_state = len(times) == 1
        inits = tuple(Init(new_pid(), NoiseKey(i, 0, 0, STREAM_INIT), score=single_state) for i in range(n))
        evals = yield Batch(inits=inits)
        nfe = spent(evals)
        finals = [init.pid for init in inits]
        if not single_state:
            expands = tuple(
                Expand(
                    new_pid(),
                    parent=init.pid,
                    moves=tuple(Move(times[k], NoiseKey(i, k, 0)) for k in range(1, len(times))),
                )
                for i, init in enumerate(inits)
            )
            evals = yield Batch(expands=expands, release=tuple(finals))
            nfe += spent(evals)
            finals = [e.pid for e in expands]
        rewards = [evals[p].reward for p in finals]
        order = rank_desc(rewards)
        record = StepRecord(step=len(times) - 1, s=times[-1], nfe=nfe, candidates=n, best_reward=rewards[order[0]])
        return SearchOutcome(
            best=finals[order[0]],
            reward=rewards[order[0]],
            nfe=nfe,
            records=[record],
            selected=[finals[i] for i in order],
        )


class Base(BestOfN):
    """Plain sampling: one trajectory (Best-of-1)."""

    name = "base"

    @dataclass(frozen=True)
    class Config:
        n: int = 1

        def __post_init__(self) -> None:
            if self.n != 1:
                raise ValueError(f"n: base sampling draws exactly 1 trajectory, got {self.n}")
