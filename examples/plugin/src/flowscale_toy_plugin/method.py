"""A search-method plugin: Best-of-N drawn in `rounds` sequential rounds of `n` trajectories each.

It decides and never calls a model: it yields `Batch`es of requests (see flowscale_ray/search/protocol.py)
and receives the `Evaluation` of every particle it asked for. Each trajectory is one `Init` at s_0 (not
scored unless it is the only state) and one `Expand` that steps it along the rest of the grid and scores
the final state. NFE = rounds x n x steps, which `planned_nfe` must state exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowscale_ray.search.base import SearchMethod, positive, rank_desc, spent
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
class SequentialBoNConfig:
    """The job file's `method:` keys besides `name` (unknown keys are refused by the job loader)."""

    n: int = 4  # trajectories per round
    rounds: int = 2

    def __post_init__(self) -> None:
        positive("n", self.n)  # raises "n: must be > 0, got ..." (shown as method.n)
        positive("rounds", self.rounds)


class SequentialBestOfN(SearchMethod):
    name = "sequential_bon"  # must equal the entry point's name
    Config = SequentialBoNConfig

    def planned_nfe(self, ctx: SearchContext) -> int:
        return self.config.rounds * self.config.n * ctx.steps

    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        n, times = self.config.n, ctx.search_times
        new_pid = PidCounter()
        single_state = len(times) == 1
        finals: list[int] = []
        rewards: list[float] = []
        records: list[StepRecord] = []
        nfe = 0
        for r in range(self.config.rounds):
            chains = range(r * n, (r + 1) * n)  # distinct noise keys across rounds
            inits = tuple(Init(new_pid(), NoiseKey(c, 0, 0, STREAM_INIT), score=single_state) for c in chains)
            evals = yield Batch(inits=inits)
            round_nfe = spent(evals)
            ends = [init.pid for init in inits]
            if not single_state:
                expands = tuple(
                    Expand(
                        new_pid(),
                        parent=init.pid,
                        moves=tuple(Move(times[k], NoiseKey(c, k, 0)) for k in range(1, len(times))),
                    )
                    for c, init in zip(chains, inits, strict=True)
                )
                evals = yield Batch(expands=expands, release=tuple(ends))  # the inits are no longer needed
                round_nfe += spent(evals)
                ends = [e.pid for e in expands]
            finals += ends
            rewards += [evals[p].reward for p in ends]
            nfe += round_nfe
            best = max(rewards)
            records.append(StepRecord(step=r, s=times[-1], nfe=round_nfe, candidates=n, best_reward=best))
        order = rank_desc(rewards)
        return SearchOutcome(
            best=finals[order[0]],
            reward=rewards[order[0]],
            nfe=nfe,
            records=records,
            selected=[finals[i] for i in order],  # best first, for top-k output
        )
