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
class Chain:
    index: int
    state: int  # pid of the current state
    best: float  # r*, the running best reward of the chain
    budget: int  # candidates left for the whole chain
    base_quota: int
    bonus: list[int]  # rolled-over quota per interval (rollover: spread)
    base_quotas: list[int] | None = None  # per interval, when the quota is not even (abf's quota_power)
    interval: int = 0
    quota: int = 0
    drawn: int = 0
    interval_best: float = float("-inf")
    interval_best_pid: int = -1
    interval_rewards: list[float] = field(default_factory=list)
    done: bool = False


class IntervalSearch(SearchMethod):
    """RBF's skeleton: N chains, one candidate per chain per batch, a quota per interval with rollover, the
    fallback to the interval's best when the quota runs out, the last interval spending what is left.
    Subclasses decide when a chain accepts its interval's best candidate (`accepts`), where the unused quota goes
    (`rollover`) and how many chains run (`chains`); `rbf`, `abf` and `vt` share it."""

    def chains(self) -> int:
        """Chains used: n_chains, or with `chain_nfe` one per chain_nfe of budget (between 1 and n_chains)."""
        c = self.config
        return c.n_chains if not c.chain_nfe else max(1, min(c.n_chains, c.nfe_budget // c.chain_nfe))

    def rollover(self) -> str:
        """Where an accepted interval's unused quota goes: `next` interval, or `spread` over all later ones."""
        return self.config.rollover

    def main_budget(self, nfe: int) -> int:
        """What the chains spend out of a budget of `nfe` (all of it; vt's `polish` keeps some for the end)."""
        return nfe

    def _shares(self, ctx: SearchContext) -> list[int]:
        c = self.config
        n_chains = self.chains()
        intervals = ctx.steps - 1
        remaining = self.main_budget(c.nfe_budget) - n_chains * c.seed_candidates
        if intervals < 1:
            raise ValueError(f"{self.name} needs at least 2 steps")
        if remaining < n_chains * intervals:
            need = n_chains * (c.seed_candidates + intervals)
            kept = c.nfe_budget - self.main_budget(c.nfe_budget)
            also = f" besides the {kept} kept for polish" if kept else ""
            raise ValueError(
                f"nfe_budget: {c.nfe_budget} is too small for {n_chains} chains, {c.seed_candidates} seed "
                f"candidates and {ctx.steps} steps{also}; need at least {need + kept}"
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
        main = self.main_budget(nfe)
        chains = min(c.n_chains, per_round(main, per_chain, "chain (a start and one candidate per interval)"))
        return type(self)(replace(c, n_chains=chains, nfe_budget=nfe))

    def quotas(self, share: int, intervals: int) -> list[int] | None:
        """Each interval's base quota out of a chain's `share` (at least one candidate each), or None for the
        even split (share // intervals each, the remainder to the last interval)."""
        return None

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
                    base_quotas=self.quotas(shares[b], intervals),
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
        outcome = SearchOutcome(
            best=finals[order[0]],
            reward=final_rewards[order[0]],
            nfe=nfe,
            records=records,
            selected=[finals[i] for i in order],
        )
        return (yield from self.finish(ctx, outcome, new_pid))

    def finish(self, ctx: SearchContext, outcome: SearchOutcome, new_pid: PidCounter) -> SearchGenerator:
        """What follows the chains (vt's local search); by default nothing."""
        return outcome
        yield  # a generator that yields nothing

    def _roll_over(self, ch: Chain, leftover: int, intervals: int) -> None:
        """Hand the unused quota of the interval just left to the later ones (the last takes what is left)."""
        nxt = ch.interval + 1
        if self.rollover() == "next":
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
            base = ch.base_quota if ch.base_quotas is None else ch.base_quotas[interval]
            ch.quota = base + ch.bonus[interval]

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


class RolloverBudgetForcing(IntervalSearch):
    """Rollover Budget Forcing, the paper's Algorithm 2 (rollover to the next interval).

    A chain accepts the first candidate that strictly beats its running best r* (that candidate is the interval's
    best then), and the unused quota goes to the next interval."""

    name = "rbf"
    Config = RBFConfig

    def chains(self) -> int:
        return self.config.n_chains

    def rollover(self) -> str:
        return "next"

    def accepts(self, ch: Chain) -> bool:
        return ch.interval_best > ch.best
