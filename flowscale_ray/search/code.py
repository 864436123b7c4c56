"""CoDe (Singh et al.) and, with block length 1, SVDD (Li et al.): blockwise best-of-K per chain
(spec 2.4, 2.5).

N chains. At each block, every chain's state is copied K times; each copy runs L consecutive sampler steps
independently (evaluating its velocity after each step, 1 NFE per step); then each chain keeps the copy
whose final x0 estimate scores highest (argmax, ties to the first). Blocks cover the grid up to s_{M-1};
the final step to 0 is the executor's.

NFE = N (initial states) + N K (M - 1). The reference code also spends (K - 1) N NFE on K identical
copies of each initial state; we evaluate each initial state once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flowscale_ray.search.base import SearchMethod, argmax_first, per_round, positive, rank_desc, spent
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


def children_for(nfe: int, n_chains: int, ctx: SearchContext) -> tuple[int, int]:
    """(chains, children per chain) that a round of `nfe` pays for: N + N*K*(steps - 1) <= nfe, with the
    configured chains when K >= 1 allows it, else fewer chains."""
    per_chain = 1 + (ctx.steps - 1)  # a chain with one child per step
    chains = min(n_chains, per_round(nfe, per_chain, "chain with one child per step"))
    return chains, max(1, (nfe - chains) // (chains * max(1, ctx.steps - 1)))


def block_search(n_chains: int, n_children: int, block: int, ctx: SearchContext) -> SearchGenerator:
    times = ctx.search_times
    new_pid = PidCounter()
    last = len(times) - 1
    inits = tuple(Init(new_pid(), NoiseKey(b, 0, 0, STREAM_INIT), score=last == 0) for b in range(n_chains))
    evals = yield Batch(inits=inits)
    nfe = spent(evals)
    chains = [i.pid for i in inits]
    rewards = [evals[p].reward for p in chains]
    records: list[StepRecord] = []
    dropped: tuple[int, ...] = ()
    k = 0
    while k < last:
        k_end = min(k + block, last)
        children = [
            [
                Expand(
                    new_pid(),
                    parent=chains[b],
                    moves=tuple(Move(times[kk], NoiseKey(b, kk, j)) for kk in range(k + 1, k_end + 1)),
                )
                for j in range(n_children)
            ]
            for b in range(n_chains)
        ]
        evals = yield Batch(
            expands=tuple(e for per_chain in children for e in per_chain), release=tuple(chains) + dropped
        )
        step_nfe = spent(evals)
        nfe += step_nfe
        keep: list[int] = []
        for b in range(n_chains):
            scores = [evals[c.pid].reward for c in children[b]]
            j = argmax_first(scores)
            chains[b], rewards[b] = children[b][j].pid, scores[j]
            keep.append(chains[b])
        kept = set(keep)
        dropped = tuple(c.pid for per_chain in children for c in per_chain if c.pid not in kept)
        records.append(
            StepRecord(
                step=k_end,
                s=times[k_end],
                nfe=step_nfe,
                candidates=n_chains * n_children,
                best_reward=max(rewards),
            )
        )
        k = k_end
    order = rank_desc(rewards)
    return SearchOutcome(
        best=chains[order[0]],
        reward=rewards[order[0]],
        nfe=nfe,
        records=records,
        selected=[chains[i] for i in order],
    )


@dataclass(frozen=True)
class CoDeConfig:
    n_chains: int = 2
    n_children: int = 25
    block: int = 2

    def __post_init__(self) -> None:
        positive("n_chains", self.n_chains)
        positive("n_children", self.n_children)
        positive("block", self.block)


class CoDe(SearchMethod):
    name = "code"
    Config = CoDeConfig

    def planned_nfe(self, ctx: SearchContext) -> int:
        c = self.config
        return c.n_chains + c.n_chains * c.n_children * (ctx.steps - 1)

    def with_budget(self, nfe: int, ctx: SearchContext) -> SearchMethod:
        """As many children per step as `nfe` pays for (fewer chains only when one child each is too much)."""
        chains, children = children_for(nfe, self.config.n_chains, ctx)
        return CoDe(replace(self.config, n_chains=chains, n_children=children))

    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        c = self.config
        return (yield from block_search(c.n_chains, c.n_children, c.block, ctx))


@dataclass(frozen=True)
class SVDDConfig:
    n_chains: int = 2
    n_children: int = 25

    def __post_init__(self) -> None:
        positive("n_chains", self.n_chains)
        positive("n_children", self.n_children)


class SVDD(SearchMethod):
    """SVDD with the argmax (beta -> 0) selection the paper uses: CoDe with blocks of one step."""

    name = "svdd"
    Config = SVDDConfig

    def planned_nfe(self, ctx: SearchContext) -> int:
        c = self.config
        return c.n_chains + c.n_chains * c.n_children * (ctx.steps - 1)

    def with_budget(self, nfe: int, ctx: SearchContext) -> SearchMethod:
        """As many children per step as `nfe` pays for (fewer chains only when one child each is too much)."""
        chains, children = children_for(nfe, self.config.n_chains, ctx)
        return SVDD(replace(self.config, n_chains=chains, n_children=children))

    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        c = self.config
        return (yield from block_search(c.n_chains, c.n_children, 1, ctx))
