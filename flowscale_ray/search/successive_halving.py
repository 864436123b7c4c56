"""Successive halving over trajectories: Best-of-N that stops paying for the trajectories whose x0 estimate
already scores poorly (`sh`).

`n` independent trajectories start as Best-of-N's do (the same noises: with `keep: 1` every request is
Best-of-N's). At each checkpoint (a fraction of the way through the search grid) every surviving trajectory's
x0 estimate is scored, and only the best `keep` fraction (at least `min_keep`) goes on; the survivors run to
the last search time, are scored there, and the best is selected. Scoring happens only at the checkpoints and
at the end, so verifier calls stay close to Best-of-N's (N/S per step, the paper's cost table), not one per
NFE as in SVDD, SMC or RBF.

    NFE = n k_1 + n_1 (k_2 - k_1) + ... + n_J (M - k_J)      n_j = max(min_keep, ceil(keep n_{j-1}))

where M is the number of steps and k_j the checkpoints' step indices. This is the "speculative rejection" idea
for Best-of-N decoding of language models (Sun et al., 2024, arXiv 2410.20290) applied to the denoising chain:
how early the final reward can be read from the x0 estimate decides how much it saves. `with_budget(nfe)`
takes the largest `n` whose schedule fits. On an SDE sampler each survivor continues its own noise, so the
method needs no branching; on an ODE it is exactly Best-of-N with early rejection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
class SuccessiveHalvingConfig:
    n: int = 32
    nfe_budget: int | None = None  # when set, n is the largest that this budget pays for
    checkpoints: tuple[float, ...] = field(default=(0.3,))  # fractions of the search grid, in (0, 1)
    keep: float = 0.25  # fraction of the trajectories kept at each checkpoint
    min_keep: int = 1

    def __post_init__(self) -> None:
        positive("n", self.n)
        positive("min_keep", self.min_keep)
        if self.nfe_budget is not None:
            positive("nfe_budget", self.nfe_budget)
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep: must be in (0, 1], got {self.keep}")
        cps = tuple(self.checkpoints)
        if any(not 0 < c < 1 for c in cps) or list(cps) != sorted(set(cps)):
            raise ValueError(f"checkpoints: must be increasing fractions in (0, 1), got {list(cps)}")
        object.__setattr__(self, "checkpoints", cps)


class SuccessiveHalving(SearchMethod):
    name = "sh"
    Config = SuccessiveHalvingConfig

    # -- the schedule -----------------------------------------------------------------------------------------
    def stops(self, ctx: SearchContext) -> list[int]:
        """Indices into the search times where trajectories are scored: the checkpoints, then the last."""
        last = len(ctx.search_times) - 1
        ks = sorted({min(last - 1, max(1, round(c * ctx.steps))) for c in self.config.checkpoints}) if last > 1 else []
        return [*ks, last]

    def survivors(self, n: int, ctx: SearchContext) -> list[int]:
        """How many trajectories run each leg (leg j ends at stops[j])."""
        counts = [n]
        for _ in self.stops(ctx)[:-1]:
            counts.append(min(counts[-1], max(self.config.min_keep, math.ceil(self.config.keep * counts[-1]))))
        return counts

    def _cost(self, n: int, ctx: SearchContext) -> int:
        stops, counts = self.stops(ctx), self.survivors(n, ctx)
        cost, at = counts[0], 0  # each start is evaluated once (1 NFE) at s_0
        for k, count in zip(stops, counts, strict=True):
            cost += count * (k - at)
            at = k
        return cost

    def _n(self, ctx: SearchContext) -> int:
        budget = self.config.nfe_budget
        if budget is None:
            return self.config.n
        if self._cost(1, ctx) > budget:
            raise ValueError(f"nfe_budget: {budget} NFE cannot pay one trajectory ({self._cost(1, ctx)} NFE)")
        lo, hi = 1, 2  # the cost grows with n: double past the budget, then bisect (the largest n that fits)
        while self._cost(hi, ctx) <= budget:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._cost(mid, ctx) <= budget else (lo, mid)
        return lo

    def planned_nfe(self, ctx: SearchContext) -> int:
        return self._cost(self._n(ctx), ctx)

    def with_budget(self, nfe: int, ctx: SearchContext) -> SearchMethod:
        """As many starting trajectories as `nfe` pays for with this schedule."""
        cfg = self.config
        sized = SuccessiveHalving(SuccessiveHalvingConfig(cfg.n, nfe, cfg.checkpoints, cfg.keep, cfg.min_keep))
        sized.planned_nfe(ctx)  # raises when not even one trajectory fits
        return sized

    # -- the search -------------------------------------------------------------------------------------------
    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        times, n = ctx.search_times, self._n(ctx)
        stops, counts = self.stops(ctx), self.survivors(n, ctx)
        new_pid = PidCounter()
        single_state = len(times) == 1
        inits = tuple(Init(new_pid(), NoiseKey(i, 0, 0, STREAM_INIT), score=single_state) for i in range(n))
        evals = yield Batch(inits=inits)
        nfe = spent(evals)
        live = [(i, init.pid) for i, init in enumerate(inits)]  # (trajectory, its particle)
        records: list[StepRecord] = []
        rewards = [evals[p].reward for _, p in live]
        at = 0
        for leg, (k, count) in enumerate(zip(stops, counts, strict=True)):
            if single_state:
                break
            if leg > 0:  # keep the best `count` of the trajectories scored at the previous stop
                order = rank_desc(rewards)[:count]
                kept = [live[j] for j in sorted(order)]
                release = tuple(p for j, (_, p) in enumerate(live) if j not in set(order))
            else:
                kept, release = live, ()
            expands = tuple(
                Expand(
                    new_pid(), parent=p, moves=tuple(Move(times[s], NoiseKey(i, s, 0)) for s in range(at + 1, k + 1))
                )
                for i, p in kept
            )
            evals = yield Batch(expands=expands, release=(*release, *(p for _, p in kept)))
            used = spent(evals)
            nfe += used
            live = [(i, e.pid) for (i, _), e in zip(kept, expands, strict=True)]
            rewards = [evals[e.pid].reward for e in expands]
            best = max(rewards)
            records.append(StepRecord(step=k, s=times[k], nfe=used, candidates=len(expands), best_reward=best))
            at = k
        order = rank_desc(rewards)
        if single_state:
            records.append(StepRecord(step=0, s=times[0], nfe=nfe, candidates=n, best_reward=rewards[order[0]]))
        return SearchOutcome(
            best=live[order[0]][1],
            reward=rewards[order[0]],
            nfe=nfe,
            records=records,
            selected=[live[j][1] for j in order],
        )
