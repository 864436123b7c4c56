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

Defaults (explore 0.5, margin 0, spread, n_chains 4, chain_nfe 200) were chosen on the mixture scenarios'
tuning searches (benchmarks/adaptive_study.py tune); docs/adaptive.md has the figures.

With `explore: 0, margin: 0, rollover: next, chain_nfe: 0` every decision is RBF's (tests replay both
request by request).

Budget: exactly `nfe_budget`, split as in RBF: N x seed_candidates NFE for the starting states, the rest
evenly over the chains, each chain's share evenly over the M-1 intervals with remainders to the last.

The loop (`IntervalSearch`) is shared with Verifier-Threshold (`verifier_threshold.py`), which differs only in
its acceptance rule and its default rollover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

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


@dataclass(frozen=True)
class ABFConfig:
    n_chains: int = 4
    nfe_budget: int = 500
    seed_candidates: int = 1
    explore: float = 0.5  # fraction of the interval's quota drawn before accepting (0: RBF)
    margin: float = 0.0  # accept only r > r* + margin (0: RBF's strict improvement)
    rollover: str = "spread"  # next (RBF) | spread
    chain_nfe: int = 200  # > 0: one chain per chain_nfe of budget, between 1 and n_chains (0: n_chains)

    def __post_init__(self) -> None:
        check_budget_settings(self.n_chains, self.nfe_budget, self.seed_candidates, self.rollover)
        check_fraction("explore", self.explore)
        check_chain_nfe(self.chain_nfe)
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin: must be a finite number >= 0, got {self.margin}")


@dataclass
class Chain:
    index: int
    state: int  # pid of the current state
    best: float  # r*, the running best reward of the chain
    budget: int  # candidates left for the whole chain
    base_quota: int
    bonus: list[int]  # rolled-over quota per interval (rollover: spread)
    interval: int = 0
    quota: int = 0
    drawn: int = 0
    interval_best: float = float("-inf")
    interval_best_pid: int = -1
    interval_rewards: list[float] = field(default_factory=list)
    done: bool = False


class IntervalSearch(SearchMethod):
    """N chains, one candidate per chain per batch, a quota per interval with rollover (RBF's skeleton).
    Subclasses decide when a chain accepts its interval's best candidate (`accepts`)."""

    def chains(self) -> int:
        """Chains used: n_chains, or with `chain_nfe` one per chain_nfe of budget (between 1 and n_chains)."""
        c = self.config
        per = getattr(c, "chain_nfe", 0)
        return c.n_chains if not per else max(1, min(c.n_chains, c.nfe_budget // per))

    def _shares(self, ctx: SearchContext) -> list[int]:
        c = self.config
        n_chains = self.chains()
        intervals = ctx.steps - 1
        remaining = c.nfe_budget - n_chains * c.seed_candidates
        if intervals < 1:
            raise ValueError(f"{self.name} needs at least 2 steps")
        if remaining < n_chains * intervals:
            need = n_chains * (c.seed_candidates + intervals)
            raise ValueError(
                f"nfe_budget: {c.nfe_budget} is too small for {n_chains} chains, {c.seed_candidates} seed "
                f"candidates and {ctx.steps} steps; need at least {need}"
            )
        share, extra = divmod(remaining, n_chains)
        return [share + (1 if b < extra else 0) for b in range(n_chains)]

    def planned_nfe(self, ctx: SearchContext) -> int:
        self._shares(ctx)
        return self.config.nfe_budget

    def with_budget(self, nfe: int, ctx: SearchContext) -> SearchMethod:
        """This method spending `nfe`, with as many of the configured chains as it pays a start and one
        candidate per interval for."""
        c = self.config
        per_chain = c.seed_candidates + max(1, ctx.steps - 1)
        chains = min(c.n_chains, per_round(nfe, per_chain, "chain (a start and one candidate per interval)"))
        return type(self)(replace(c, n_chains=chains, nfe_budget=nfe))

    def accepts(self, ch: Chain) -> bool:
        """Whether the chain moves on now to its interval's best candidate as an accepted one (called after
        each candidate of a non-final interval, `ch.drawn` >= 1)."""
        raise NotImplementedError

    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        c = self.config
        times = ctx.search_times
        intervals = len(times) - 1
        shares = self._shares(ctx)
        new_pid = PidCounter()
        seeds = [
            [Init(new_pid(), NoiseKey(b, 0, j, STREAM_INIT)) for j in range(c.seed_candidates)]
            for b in range(len(shares))
        ]
        evals = yield Batch(inits=tuple(i for per_chain in seeds for i in per_chain))
        nfe = spent(evals)
        chains: list[Chain] = []
        for b, per_chain in enumerate(seeds):
            j = argmax_first([evals[i.pid].reward for i in per_chain])
            chains.append(
                Chain(
                    index=b,
                    state=per_chain[j].pid,
                    best=evals[per_chain[j].pid].reward,
                    budget=shares[b],
                    base_quota=shares[b] // intervals,
                    bonus=[0] * intervals,
                )
            )
        release = tuple(i.pid for per_chain in seeds for i in per_chain if i.pid not in {ch.state for ch in chains})
        for ch in chains:
            self._enter_interval(ch, 0, intervals=intervals)
        records: list[StepRecord] = []
        while True:
            active = [ch for ch in chains if not ch.done]
            if not active:
                break
            expands = {
                ch.index: Expand(
                    new_pid(),
                    parent=ch.state,
                    moves=(Move(times[ch.interval + 1], NoiseKey(ch.index, ch.interval + 1, ch.drawn)),),
                )
                for ch in active
            }
            evals = yield Batch(expands=tuple(expands.values()), release=release)
            nfe += spent(evals)
            release = ()
            for ch in active:
                child = expands[ch.index].pid
                reward = evals[child].reward
                ch.drawn += 1
                ch.budget -= 1
                ch.interval_rewards.append(reward)
                # Only the interval's best candidate can still be chosen: release the others at once.
                if reward > ch.interval_best:
                    if ch.interval_best_pid >= 0 and ch.interval_best_pid != child:
                        release += (ch.interval_best_pid,)
                    ch.interval_best, ch.interval_best_pid = reward, child
                else:
                    release += (child,)
                last = ch.interval == intervals - 1
                if not last and self.accepts(ch):
                    leftover = ch.quota - ch.drawn
                    records.append(self._record(ch, times, accepted=1, rollover=leftover))
                    ch.best = max(ch.best, ch.interval_best)
                    release += self._move_to(ch, ch.interval_best_pid)
                    self._roll_over(ch, leftover, intervals)
                    self._enter_interval(ch, ch.interval + 1, intervals=intervals)
                elif ch.drawn == ch.quota:
                    records.append(self._record(ch, times, accepted=0, rollover=0))
                    release += self._move_to(ch, ch.interval_best_pid)
                    if last:
                        ch.done = True
                    else:
                        self._enter_interval(ch, ch.interval + 1, intervals=intervals)
        finals = [ch.state for ch in chains]
        final_rewards = [ch.interval_best for ch in chains]
        order = rank_desc(final_rewards)
        return SearchOutcome(
            best=finals[order[0]],
            reward=final_rewards[order[0]],
            nfe=nfe,
            records=records,
            selected=[finals[i] for i in order],
        )

    def _roll_over(self, ch: Chain, leftover: int, intervals: int) -> None:
        """Hand the unused quota of the interval just left to the later ones (the last takes what is left)."""
        nxt = ch.interval + 1
        if self.config.rollover == "next":
            ch.bonus[nxt] += leftover
            return
        later = intervals - nxt  # intervals after this one, the last included
        each, extra = divmod(leftover, later)
        for i in range(nxt, intervals - 1):  # the remainder goes to the nearest intervals first
            ch.bonus[i] += each + (1 if i - nxt < extra else 0)

    @staticmethod
    def _move_to(ch: Chain, pid: int) -> tuple[int, ...]:
        """Make pid (the interval's best candidate) the chain's state; return the old state to release."""
        assert pid == ch.interval_best_pid
        drop = (ch.state,)
        ch.state = pid
        return drop

    @staticmethod
    def _enter_interval(ch: Chain, interval: int, intervals: int) -> None:
        ch.interval = interval
        ch.drawn = 0
        ch.interval_best, ch.interval_best_pid = float("-inf"), -1
        ch.interval_rewards = []
        if interval == intervals - 1:
            ch.quota = ch.budget  # last interval: everything that is left
        else:
            ch.quota = ch.base_quota + ch.bonus[interval]

    @staticmethod
    def _record(ch: Chain, times: tuple[float, ...], accepted: int, rollover: int) -> StepRecord:
        return StepRecord(
            step=ch.interval + 1,
            s=times[ch.interval + 1],
            nfe=ch.drawn,
            candidates=ch.drawn,
            best_reward=ch.interval_best,
            accepted=accepted,
            rollover=rollover,
            extra={"chain": ch.index, "quota": ch.quota},
        )


class AdaptiveBudgetForcing(IntervalSearch):
    name = "abf"
    Config = ABFConfig

    def accepts(self, ch: Chain) -> bool:
        c = self.config
        explored = ch.drawn >= max(1, math.ceil(c.explore * ch.quota))
        return explored and ch.interval_best > ch.best + c.margin
