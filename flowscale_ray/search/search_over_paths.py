"""Search over Paths (Ma et al. 2025), as configured in the RBF paper (spec 2.2).

1. N chains solve the ODE from t=1 to t0 (`start_time`) with `substeps` Euler steps.
2. Repeat ceil(t0 / (backward - forward)) rounds, the backward target going t0 -> ... -> 0:
   a. forward (noising) kernel from t_b to t_f = t_b + forward, K times per chain with fresh noise;
   b. `substeps` sampler steps from t_f to t_b' = max(t_f - backward, 0);
   c. keep N children: the top N of all N K ('global', the paper's text) or the best child of each chain
      ('per_chain', the reference code).
Times are on the sampled path's own clock. A particle is evaluated at the start of its last substep (its x0
estimate is what is scored); the deferred last substep is taken by its next move, or by the final step.

NFE = substeps x (N + rounds N K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowscale_ray.search.base import SearchMethod, argmax_first, positive, rank_desc, spent
from flowscale_ray.search.protocol import (
    STREAM_INIT,
    STREAM_RENOISE,
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
class SearchOverPathsConfig:
    n_chains: int = 2
    n_children: int = 5
    forward: float = 0.78
    backward: float = 0.81
    start_time: float = 0.12
    substeps: int = 4
    selection: str = "global"

    def __post_init__(self) -> None:
        positive("n_chains", self.n_chains)
        positive("n_children", self.n_children)
        positive("substeps", self.substeps)
        positive("forward", self.forward)
        if self.backward <= self.forward:
            raise ValueError(f"backward: must exceed forward ({self.forward}), got {self.backward}")
        if not 0.0 <= self.start_time < 1.0:
            raise ValueError(f"start_time: must be in [0, 1), got {self.start_time}")
        if self.selection not in ("global", "per_chain"):
            raise ValueError(f"selection: unknown {self.selection!r}; allowed: global, per_chain")

    @property
    def rounds(self) -> int:
        return math.ceil(self.start_time / (self.backward - self.forward) - 1e-9)


def _linspace(start: float, stop: float, n: int) -> list[float]:
    """n + 1 points from start to stop."""
    return [start + (stop - start) * q / n for q in range(n + 1)]


class SearchOverPaths(SearchMethod):
    name = "sop"
    Config = SearchOverPathsConfig

    def planned_nfe(self, ctx: SearchContext) -> int:
        c = self.config
        return c.substeps * (c.n_chains + c.rounds * c.n_chains * c.n_children)

    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        c = self.config
        n, k, sub = c.n_chains, c.n_children, c.substeps
        new_pid = PidCounter()
        rounds = c.rounds
        path = _linspace(1.0, c.start_time, sub)  # states path[0..sub-1] are evaluated, path[sub] deferred
        inits = tuple(Init(new_pid(), NoiseKey(b, 0, 0, STREAM_INIT), score=False) for b in range(n))
        evals = yield Batch(inits=inits)
        nfe = spent(evals)
        solves = tuple(
            Expand(
                new_pid(),
                parent=i.pid,
                moves=tuple(Move(t, NoiseKey(b, 0, q)) for q, t in enumerate(path[1:sub], start=1)),
                score=rounds == 0,
            )
            for b, i in enumerate(inits)
        )
        evals = yield Batch(expands=solves, release=tuple(i.pid for i in inits))
        nfe += spent(evals)
        chains = [e.pid for e in solves]
        rewards = [evals[p].reward for p in chains]
        deferred = path[sub]  # where each chain's pending substep lands
        records: list[StepRecord] = []
        dropped: tuple[int, ...] = ()
        t_b = c.start_time
        for r in range(1, rounds + 1):
            t_f = min(t_b + c.forward, 1.0)
            t_next = max(t_f - c.backward, 0.0)
            back = _linspace(t_f, t_next, sub)
            base = r * (sub + 1)
            children = [
                [
                    Expand(
                        new_pid(),
                        parent=chains[b],
                        moves=(
                            Move(deferred, NoiseKey(b, base, -1)),
                            Move(t_f, NoiseKey(b, base, j, STREAM_RENOISE), renoise=True),
                            *(Move(t, NoiseKey(b, base + q, j)) for q, t in enumerate(back[1:sub], start=1)),
                        ),
                    )
                    for j in range(k)
                ]
                for b in range(n)
            ]
            flat = [e for per_chain in children for e in per_chain]
            evals = yield Batch(expands=tuple(flat), release=tuple(chains) + dropped)
            step_nfe = spent(evals)
            nfe += step_nfe
            if c.selection == "global":
                order = rank_desc([evals[e.pid].reward for e in flat])[:n]
                chosen = [flat[i].pid for i in order]
            else:
                chosen = [
                    per_chain[argmax_first([evals[e.pid].reward for e in per_chain])].pid for per_chain in children
                ]
            chains = chosen
            rewards = [evals[p].reward for p in chains]
            deferred, t_b = t_next, t_next
            records.append(
                StepRecord(step=r, s=back[sub - 1], nfe=step_nfe, candidates=n * k, best_reward=max(rewards))
            )
            kept = set(chosen)
            dropped = tuple(e.pid for e in flat if e.pid not in kept)
        order = rank_desc(rewards)
        return SearchOutcome(
            best=chains[order[0]],
            reward=rewards[order[0]],
            nfe=nfe,
            records=records,
            selected=[chains[i] for i in order],
        )
