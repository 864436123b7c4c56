"""Rollover Budget Forcing (paper section 6, Algorithm 2; spec 2.6).

N independent chains, each with its own share of the NFE budget, proposing one candidate at a time (the
chains run in lockstep, so a batch holds one candidate per active chain, each possibly at a different time).

For chain b at interval i (from s_i to s_{i+1}, i = 0 .. M-2) with quota q = Q + rolled-over budget:
  draw candidate j (1 NFE: its look-ahead velocity, x0 estimate and reward);
  if its reward beats the chain's running best r* strictly: move to it, r* <- r, and roll the unused
     quota q - j over to the next interval;
  else if j == q: move to the best candidate of this interval (r* unchanged; SVDD-style fallback).
The last searched interval (landing at s_{M-1}) has nowhere to roll over to: the chain spends all of its
remaining budget there and keeps the best candidate. The final step to 0 is the executor's.

Budget: `nfe_budget` is spent exactly. N x seed_candidates NFE go to the starting states (the paper: one
noise per chain; the reference code: a best-of-25 seed search per chain); the rest is split evenly over the
chains, each chain's share evenly over the M-1 intervals (Q = floor(share / (M-1))), remainders to the last
interval. Output: the chain whose final state scores highest.
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


@dataclass(frozen=True)
class RBFConfig:
    n_chains: int = 2
    nfe_budget: int = 500
    seed_candidates: int = 1  # 1: the paper; 25: the reference code's seed search

    def __post_init__(self) -> None:
        positive("n_chains", self.n_chains)
        positive("nfe_budget", self.nfe_budget)
        positive("seed_candidates", self.seed_candidates)


@dataclass
class _Chain:
    index: int
    state: int  # pid of the current state
    best: float  # r*, the running best reward of the chain
    budget: int  # candidates left for the whole chain
    base_quota: int
    interval: int = 0
    quota: int = 0
    drawn: int = 0
    interval_best: float = float("-inf")
    interval_best_pid: int = -1
    done: bool = False


class RolloverBudgetForcing(SearchMethod):
    name = "rbf"
    Config = RBFConfig

    def _shares(self, ctx: SearchContext) -> list[int]:
        c = self.config
        intervals = ctx.steps - 1
        remaining = c.nfe_budget - c.n_chains * c.seed_candidates
        if intervals < 1:
            raise ValueError("rbf needs at least 2 steps")
        if remaining < c.n_chains * intervals:
            need = c.n_chains * (c.seed_candidates + intervals)
            raise ValueError(
                f"nfe_budget: {c.nfe_budget} is too small for {c.n_chains} chains, {c.seed_candidates} seed "
                f"candidates and {ctx.steps} steps; need at least {need}"
            )
        share, extra = divmod(remaining, c.n_chains)
        return [share + (1 if b < extra else 0) for b in range(c.n_chains)]

    def planned_nfe(self, ctx: SearchContext) -> int:
        self._shares(ctx)
        return self.config.nfe_budget

    def with_budget(self, nfe: int, ctx: SearchContext) -> SearchMethod:
        """RBF spending `nfe`, with as many of the configured chains as it pays a candidate per interval for."""
        c = self.config
        per_chain = c.seed_candidates + max(1, ctx.steps - 1)
        chains = min(c.n_chains, per_round(nfe, per_chain, "chain (a start and one candidate per interval)"))
        return RolloverBudgetForcing(replace(c, n_chains=chains, nfe_budget=nfe))

    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        c = self.config
        times = ctx.search_times
        intervals = len(times) - 1
        shares = self._shares(ctx)
        new_pid = PidCounter()
        seeds = [
            [Init(new_pid(), NoiseKey(b, 0, j, STREAM_INIT)) for j in range(c.seed_candidates)]
            for b in range(c.n_chains)
        ]
        evals = yield Batch(inits=tuple(i for per_chain in seeds for i in per_chain))
        nfe = spent(evals)
        chains: list[_Chain] = []
        for b, per_chain in enumerate(seeds):
            j = argmax_first([evals[i.pid].reward for i in per_chain])
            chains.append(
                _Chain(
                    index=b,
                    state=per_chain[j].pid,
                    best=evals[per_chain[j].pid].reward,
                    budget=shares[b],
                    base_quota=shares[b] // intervals,
                )
            )
        release = tuple(i.pid for per_chain in seeds for i in per_chain if i.pid not in {ch.state for ch in chains})
        for ch in chains:
            self._enter_interval(ch, 0, rollover=0, intervals=intervals)
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
                # Only the interval's best candidate can still be chosen: release the others at once.
                if reward > ch.interval_best:
                    if ch.interval_best_pid >= 0 and ch.interval_best_pid != child:
                        release += (ch.interval_best_pid,)
                    ch.interval_best, ch.interval_best_pid = reward, child
                else:
                    release += (child,)
                last = ch.interval == intervals - 1
                if not last and reward > ch.best:
                    records.append(self._record(ch, times, accepted=1, rollover=ch.quota - ch.drawn))
                    ch.best = reward
                    release += self._move_to(ch, child)
                    self._enter_interval(ch, ch.interval + 1, rollover=ch.quota - ch.drawn, intervals=intervals)
                elif ch.drawn == ch.quota:
                    records.append(self._record(ch, times, accepted=0, rollover=0))
                    release += self._move_to(ch, ch.interval_best_pid)
                    if last:
                        ch.done = True
                    else:
                        self._enter_interval(ch, ch.interval + 1, rollover=0, intervals=intervals)
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

    @staticmethod
    def _move_to(ch: _Chain, pid: int) -> tuple[int, ...]:
        """Make pid (the interval's best candidate) the chain's state; return the old state to release."""
        assert pid == ch.interval_best_pid
        drop = (ch.state,)
        ch.state = pid
        return drop

    @staticmethod
    def _enter_interval(ch: _Chain, interval: int, rollover: int, intervals: int) -> None:
        ch.interval = interval
        ch.drawn = 0
        ch.interval_best, ch.interval_best_pid = float("-inf"), -1
        if interval == intervals - 1:
            ch.quota = ch.budget  # last interval: everything that is left
        else:
            ch.quota = ch.base_quota + rollover

    @staticmethod
    def _record(ch: _Chain, times: tuple[float, ...], accepted: int, rollover: int) -> StepRecord:
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
