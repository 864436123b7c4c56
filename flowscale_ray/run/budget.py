"""One budget for the whole dataset: prompts that reach the target stop early, and what they did not spend funds
more rounds for the prompts still short of it.

Allocation is decided per block of prompts (one output shard), from that block's completed rounds only, so rows
never depend on the number of replicas, the prompts in flight or timing, and memory stays bounded by one block:

    wave 0   every prompt of the block runs the method with `base_nfe`; a prompt that reaches the target stops
    wave w   the block's budget left (mean_nfe x prompts, less what was charged) buys one more round of
             `round_nfe` for each prompt still short of the target, furthest from it first (lowest reward), while
             it lasts and the prompt has had fewer than `max_rounds` rounds
    end      when a wave buys nothing: every prompt keeps the best sample of all its rounds

A round is charged its planned NFE (what the method will spend, exactly), so a block never overspends. Round r
of a prompt draws fresh noise (its seed is derived from the prompt's seed and r; round 0 is the method as a
per-prompt run would do it), so a round continues the search with new candidates and the prompt keeps the best
over all its rounds: for Best-of-N that is exactly Best-of-N with more samples, for RBF more chains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flowscale_ray.config import JobConfig
from flowscale_ray.execution import TaskResult
from flowscale_ray.search.base import SearchMethod
from flowscale_ray.search.plan import planned_cost, sized
from flowscale_ray.search.protocol import SearchContext

STOP_SOLVED = "solved"  # reached the target
STOP_BUDGET = "budget"  # the block's budget could not buy another round
STOP_MAX_ROUNDS = "max_rounds"  # had max_rounds rounds
STOP_FAILED = "failed"  # a round raised (the best of the earlier rounds is kept)


@dataclass
class PromptProgress:
    """What one prompt of a block has received so far."""

    index: int
    best: TaskResult | None = None
    nfe: int = 0  # spent, as counted by the executor
    verifier_calls: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    reward_seconds: float = 0.0
    rounds: int = 0
    stop: str | None = None
    error: Exception | None = None  # the error of a failed first round

    def merged(self) -> TaskResult:
        """The best result over all rounds, carrying the NFE and seconds of all of them."""
        if self.best is None:
            raise RuntimeError(f"prompt {self.index} has no result")
        return dataclasses.replace(
            self.best,
            nfe=self.nfe,
            seconds=self.seconds,
            verifier_calls=self.verifier_calls,
            model_seconds=self.model_seconds,
            reward_seconds=self.reward_seconds,
        )


@dataclass(frozen=True)
class Target:
    """When a prompt counts as done, and how far from it a result is."""

    reward: float | None = None
    held_out: float | None = None

    def reached(self, result: TaskResult) -> bool:
        ok = self.reward is None or result.reward >= self.reward
        if self.held_out is not None:
            ok = ok and result.held_out is not None and result.held_out >= self.held_out
        return ok

    def shortfall(self, result: TaskResult) -> float:
        """How far the result is from the target (0 when reached); NaN scores count as infinitely far."""
        gaps = []
        if self.reward is not None:
            gaps.append(self.reward - result.reward)
        if self.held_out is not None:
            held = result.held_out if result.held_out is not None else -math.inf
            gaps.append(self.held_out - held)
        worst = max(gaps, default=0.0)
        return math.inf if math.isnan(worst) else max(0.0, worst)


def better(a: TaskResult, b: TaskResult | None) -> bool:
    """True if `a` should replace `b` as a prompt's best: a strictly higher given reward (ties keep the earlier
    round, NaN never wins)."""
    return b is None or a.reward > b.reward


class BlockBudget:
    """The allocation of one block's budget over its prompts, wave by wave (see the module docstring).

    `base_cost` and `round_cost` are what the method at the first and at every later round is charged: its planned
    NFE, or its planned compute units (`budget.unit: compute`).
    """

    def __init__(
        self,
        indices: Sequence[int],
        mean_nfe: float,
        base_cost: float,
        round_cost: float,
        target: Target,
        max_rounds: int,
    ) -> None:
        if base_cost <= 0 or round_cost <= 0 or max_rounds < 1:
            raise ValueError("base_cost and round_cost must be > 0 and max_rounds >= 1")
        self.total = math.floor(mean_nfe * len(indices) + 1e-9)
        if self.total < base_cost * len(indices):
            raise ValueError(f"a mean of {mean_nfe:g} cannot pay the first round ({base_cost:g}) of every prompt")
        self.base_cost = base_cost
        self.round_cost = round_cost
        self.target = target
        self.max_rounds = max_rounds
        self.prompts = {i: PromptProgress(i) for i in indices}
        self.charged: float = 0
        self.waves = 0
        self._pending: set[int] = set()  # prompts of the current wave not recorded yet

    @property
    def left(self) -> float:
        return self.total - self.charged

    def next_wave(self) -> list[int]:
        """The prompts that get a round now (each charged its cost); empty when the block is done. Call it again
        only after every prompt of the previous wave was recorded."""
        if self._pending:
            raise RuntimeError(f"next_wave before the previous wave was recorded (missing {sorted(self._pending)})")
        if self.waves == 0:
            wave = sorted(self.prompts)
            cost = self.base_cost
        else:
            short = [p for p in self.prompts.values() if p.stop is None]
            short.sort(key=lambda p: (-self.target.shortfall(p.best), p.index) if p.best is not None else (0, p.index))
            affordable = int(self.left // self.round_cost)
            wave = [p.index for p in short[:affordable]]
            for p in short[affordable:]:
                p.stop = STOP_BUDGET
            cost = self.round_cost
        self.charged += cost * len(wave)
        self.waves += 1
        self._pending = set(wave)
        return wave

    def record(self, index: int, outcome: TaskResult | Exception) -> None:
        """The outcome of prompt `index`'s round in the current wave."""
        if index not in self._pending:
            raise RuntimeError(f"prompt {index} has no round in progress")
        self._pending.discard(index)
        p = self.prompts[index]
        p.rounds += 1
        if isinstance(outcome, Exception):
            if p.best is None:
                p.error = outcome
            p.stop = STOP_FAILED
            return
        p.nfe += outcome.nfe
        p.verifier_calls += outcome.verifier_calls
        p.seconds += outcome.seconds
        p.model_seconds += outcome.model_seconds
        p.reward_seconds += outcome.reward_seconds
        if better(outcome, p.best):
            p.best = outcome
        if self.target.reached(outcome) or (p.best is not None and self.target.reached(p.best)):
            p.stop = STOP_SOLVED
        elif p.rounds >= self.max_rounds:
            p.stop = STOP_MAX_ROUNDS

    def done(self) -> bool:
        return self.waves > 0 and all(p.stop is not None for p in self.prompts.values())

    def run(self, run_wave: Callable[[list[int], int], list[tuple[int, TaskResult | Exception]]]) -> None:
        """Drive the block to the end: `run_wave(indices, wave)` runs one round of each prompt and returns every
        outcome (in any order)."""
        while not self.done():
            wave = self.next_wave()
            if not wave:
                break
            for index, outcome in run_wave(wave, self.waves - 1):
                self.record(index, outcome)
        for p in self.prompts.values():  # nothing left to buy: whoever is still short stopped for the budget
            if p.stop is None:
                p.stop = STOP_BUDGET


def sized_for_job(job: JobConfig, method: SearchMethod, amount: float) -> SearchMethod:
    """`method` set up for `amount` of the job's budget unit (NFE or compute units, reward gradients included);
    what `flowscale run` runs and `flowscale validate` describes."""
    ctx = SearchContext(grid=job.sampler.grid_times())
    return sized(method, amount, job.budget.unit, job.budget.costs, ctx, job.output.top_k, job.sampler.guided_moves())


def job_cost(job: JobConfig, method: SearchMethod, unit: str | None = None) -> float:
    """What one search of `method` is charged in `unit` (default: the job's budget unit; "nfe": its planned NFE),
    reward gradients included."""
    ctx = SearchContext(grid=job.sampler.grid_times())
    unit = unit or job.budget.unit
    return planned_cost(method, unit, job.budget.costs, ctx, job.output.top_k, job.sampler.guided_moves())
