"""Verifier-Threshold (`vt`): a chain advances a denoising step only when the verifier's score clears a threshold.

From the one-line description of arXiv 2512.08985 (its text was not available to us; docs/adaptive.md says what
is ours). N chains, one candidate per chain per batch, on RBF's skeleton (`rbf.IntervalSearch`): each
interval has a quota; a chain draws candidates until one clears the interval's threshold, then moves to the
interval's best candidate and hands the unused quota on; when the quota runs out it moves to the interval's
best anyway. The last interval spends what is left and keeps its best.

The threshold:
  threshold: a number  an absolute score (for verifiers with a meaningful scale, e.g. a probability); a
                       candidate clears it when its score is >= threshold
  threshold: null      relative (default): the first ceil(calibrate x quota) candidates of the interval are
                       drawn without advancing (at least one); the threshold is the `quantile` of their scores
                       (1.0: their best); a later candidate clears it when its score is >= the threshold. This
                       is the classic optimal-stopping rule (observe, then take the first that beats them).

Budget: exactly `nfe_budget` (RBF's split). Unused quota is spread over the remaining intervals by default
(`rollover: spread`), not dumped on the next one.

Local search at the end (`polish`, ours; `search.local`): with `polish: f > 0` the chains get the budget less
`local_nfe(nfe_budget, f, polish_depth)`, and that is spent afterwards on tries around the pick: renoise it back
`polish_depth` grid steps, denoise again, keep a try that scores strictly higher (`polish_width` per batch).
`polish: 0` (default) is vt as before, request for request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flowscale_ray.search.adaptive_rbf import check_budget_settings, check_chain_nfe, check_fraction
from flowscale_ray.search.local import check_depth, check_local_settings, local_nfe, polish
from flowscale_ray.search.protocol import PidCounter, SearchContext, SearchGenerator, SearchOutcome
from flowscale_ray.search.rbf import Chain, IntervalSearch


@dataclass(frozen=True)
class VTConfig:
    n_chains: int = 4
    nfe_budget: int = 500
    seed_candidates: int = 1
    threshold: float | None = None  # absolute score to clear; null: relative to a calibration draw
    calibrate: float = 0.25  # relative: fraction of the interval's quota drawn to set the threshold
    quantile: float = 1.0  # relative: the threshold is this quantile of the calibration scores
    rollover: str = "spread"  # next | spread
    chain_nfe: int = 200  # > 0: one chain per chain_nfe of budget, between 1 and n_chains (0: n_chains)
    polish: float = 0.0  # share of the budget for local search around the pick at the end (search.local)
    polish_depth: int = 3  # grid steps a try renoises back (and the NFE it costs)
    polish_width: int = 4  # tries per batch

    def __post_init__(self) -> None:
        check_budget_settings(self.n_chains, self.nfe_budget, self.seed_candidates, self.rollover)
        check_chain_nfe(self.chain_nfe)
        check_local_settings(self.polish, self.polish_depth, self.polish_width)
        check_fraction("calibrate", self.calibrate)
        check_fraction("quantile", self.quantile)
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"threshold: must be a finite number or null, got {self.threshold}")


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile of `values` by the nearest-rank rule (q = 0: the smallest, q = 1: the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class VerifierThreshold(IntervalSearch):
    name = "vt"
    Config = VTConfig

    def main_budget(self, nfe: int) -> int:
        c = self.config
        return nfe - local_nfe(nfe, c.polish, c.polish_depth)

    def planned_nfe(self, ctx: SearchContext) -> int:
        if self.config.polish:
            check_depth(self.config.polish_depth, ctx)
        return super().planned_nfe(ctx)

    def finish(self, ctx: SearchContext, outcome: SearchOutcome, new_pid: PidCounter) -> SearchGenerator:
        c = self.config
        kept = c.nfe_budget - self.main_budget(c.nfe_budget)
        if not kept:
            return outcome
        check_depth(c.polish_depth, ctx)
        return (yield from polish(ctx, outcome, kept, c.polish_depth, c.polish_width, new_pid))

    def accepts(self, ch: Chain) -> bool:
        c = self.config
        latest = ch.interval_rewards[-1]
        if c.threshold is not None:
            return latest >= c.threshold
        k = max(1, math.ceil(c.calibrate * ch.quota))
        if ch.drawn <= k:
            return False
        return latest >= nearest_rank(ch.interval_rewards[:k], c.quantile)
