"""Adaptive budget forcing (`abf`): Rollover Budget Forcing that does not commit its chains early.

RBF (`rbf.py`, the paper's Algorithm 2) accepts the first candidate of an interval that strictly beats the
chain's running best r* and rolls the unused quota over to the next interval. Where improvements are easy early
on (a reward that improves as soon as the x0 estimate drifts towards the target), it accepts after one or two
candidates at nearly every interval, commits its chains before the search is informative, and spends most of
its budget in the last interval as a best-of-many from one state (docs/adaptive.md measures it).

`abf` keeps RBF's structure (N chains in lockstep, one candidate per chain per batch, a quota per interval, the
SVDD-style fallback to the interval's best when the quota runs out, the last interval spending what is left)
and changes what makes a chain move on:

  explore     a fraction of the interval's quota drawn before any candidate may be accepted; then the
              interval's best candidate is accepted as soon as it beats r* by `margin` (0: RBF; 1: every
              interval draws its whole quota and moves to its best, i.e. SVDD with a rollover-free quota)
  margin      accept only an improvement over r* by more than `margin` (reward units; 0: RBF's strict `>`)
  rollover    `next` (RBF): the unused quota goes to the next interval; `spread`: it is spread evenly over
              all the remaining intervals, so savings are not dumped on the last one
  chain_nfe   one chain per chain_nfe of budget, between 1 and n_chains (0: always n_chains); at 100 NFE
              one chain with ~10 candidates per interval beat two with ~5 on the mixture scenarios
  quota_power interval i (0-based) gets one candidate plus a share of the rest in proportion to
              (i + 1) ** quota_power (0: RBF's even split): search where the reward is informative, late
              in the chain on rewards that can only be read off a nearly finished sample

Defaults (explore 0.5, margin 0, spread, n_chains 4, chain_nfe 200) were chosen on the mixture scenarios'
tuning searches (benchmarks/adaptive_study.py tune); docs/adaptive.md has the figures.

With `explore: 0, margin: 0, rollover: next, chain_nfe: 0` every decision is RBF's (tests replay both
request by request).

Budget: exactly `nfe_budget`, split as in RBF: N x seed_candidates NFE for the starting states, the rest
evenly over the chains, each chain's share evenly over the M-1 intervals with remainders to the last.

The loop (`rbf.IntervalSearch`) is RBF's own, shared with Verifier-Threshold (`verifier_threshold.py`): the
three methods differ only in their acceptance rule, their rollover and their number of chains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowscale_ray.search.base import positive
from flowscale_ray.search.rbf import Chain, IntervalSearch

ROLLOVERS = ("next", "spread")


def check_budget_settings(n_chains: int, nfe_budget: int, seed_candidates: int, rollover: str) -> None:
    positive("n_chains", n_chains)
    positive("nfe_budget", nfe_budget)
    positive("seed_candidates", seed_candidates)
    if rollover not in ROLLOVERS:
        raise ValueError(f"rollover: must be one of {', '.join(ROLLOVERS)}, got {rollover!r}")


def check_chain_nfe(value: int) -> None:
    if value < 0:
        raise ValueError(f"chain_nfe: must be >= 0, got {value}")


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: must be in [0, 1], got {value}")


def late_quotas(share: int, intervals: int, power: float) -> list[int] | None:
    """One candidate per interval, and what is left of `share` split in proportion to (i + 1) ** power (the
    last interval takes the rounding remainder, and spends whatever is left anyway). None for power 0 (RBF's
    even split)."""
    if power == 0:
        return None
    weights = [(i + 1) ** power for i in range(intervals)]
    extra = share - intervals
    quotas = [1 + math.floor(extra * w / sum(weights)) for w in weights]
    quotas[-1] += share - sum(quotas)
    return quotas


@dataclass(frozen=True)
class ABFConfig:
    n_chains: int = 4
    nfe_budget: int = 500
    seed_candidates: int = 1
    explore: float = 0.5  # fraction of the interval's quota drawn before accepting (0: RBF)
    margin: float = 0.0  # accept only r > r* + margin (0: RBF's strict improvement)
    rollover: str = "spread"  # next (RBF) | spread
    chain_nfe: int = 200  # > 0: one chain per chain_nfe of budget, between 1 and n_chains (0: n_chains)
    quota_power: float = 0.0  # interval i's extra quota grows as (i + 1) ** quota_power (0: even, RBF's)

    def __post_init__(self) -> None:
        check_budget_settings(self.n_chains, self.nfe_budget, self.seed_candidates, self.rollover)
        if not (0 <= self.quota_power <= 16 and math.isfinite(self.quota_power)):
            raise ValueError(f"quota_power: must be a number in [0, 16], got {self.quota_power}")
        check_fraction("explore", self.explore)
        check_chain_nfe(self.chain_nfe)
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin: must be a finite number >= 0, got {self.margin}")


class AdaptiveBudgetForcing(IntervalSearch):
    name = "abf"
    Config = ABFConfig

    def quotas(self, share: int, intervals: int) -> list[int] | None:
        return late_quotas(share, intervals, self.config.quota_power)

    def accepts(self, ch: Chain) -> bool:
        c = self.config
        explored = ch.drawn >= max(1, math.ceil(c.explore * ch.quota))
        return explored and ch.interval_best > ch.best + c.margin
