"""What a method will spend, without a model: velocity evaluations (NFE) and verifier calls.

`plan(method, ctx)` drives the method's generator against a stand-in executor (`DryRun`, also the scripted
executor of the method tests) that applies the executors' NFE
rule (protocol.py: an evaluated particle's velocity is cached and reused by its first move; every later move
from a changed state, and the evaluation of every created state at s > 0, costs one velocity evaluation;
renoising costs none) and answers each scored request with a reward drawn from a seeded generator. Verifier
calls are the scored requests plus the final scores of the `top_k` selected samples, as the executors count
them (`execution.tasks.build_result`).

Every built-in method spends exactly its `planned_nfe` and scores a number of candidates that does not depend
on the rewards (tests check both against the real executors), so the plan is exact for them. A method whose
verifier calls do depend on the rewards gets an estimate from random rewards.

With reward-gradient guidance (`sampler.guidance`), pass `guided` (a predicate on a move's start time, from
`SamplerSpec.guided_moves`): the plan then charges `GUIDED_STEP_NFE` for each gradient as the in-process executor
does, once per state that a guided move leaves (children of one state share its gradient), and `sized` fits an
NFE budget to the NFE charged, gradients included, instead of to the method's candidates alone.

Compute units price a search as `c_d x NFE + c_v x verifier calls` (the paper's cost model: BoN N c_d + (N/S)
c_v; SMC, SVDD, RBF N c_d + N c_v). `size_for_units` finds the largest NFE budget whose planned units fit.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from flowscale_ray.search.protocol import GUIDED_STEP_NFE, Batch, Evaluation, Expand, Init, SearchContext, SearchOutcome

__all__ = ["MAX_SIZED_NFE", "Costs", "DryRun", "Guided", "Plan", "plan", "size_for_units"]

MAX_SIZED_NFE = 100_000  # the largest NFE budget a compute-unit budget is sized to (plans are dry runs)


@dataclass(frozen=True)
class Plan:
    nfe: int
    verifier_calls: int

    def units(self, costs: Costs) -> float:
        return costs.units(self.nfe, self.verifier_calls)


@dataclass(frozen=True)
class Costs:
    """Prices of one velocity evaluation (`c_d`) and one verifier call (`c_v`) in compute units."""

    c_d: float = 1.0
    c_v: float = 0.0

    def units(self, nfe: float, verifier_calls: float) -> float:
        return self.c_d * nfe + self.c_v * verifier_calls


RewardFn = Callable[[int, "int | None", float, "Init | Expand"], float]  # (pid, parent, s, request) -> reward
Guided = Callable[[float], bool]  # whether a move starting at time s is a guided step


class DryRun:
    """A method's search driven against a stand-in executor, without a model.

    NFE are charged by the executors' rule (see the module docstring). Each scored request gets
    `reward(pid, parent, s, request)` (default: a draw from a generator seeded by `seed`), an unscored one NaN.
    Protocol violations (a reused pid, an expand or release of an unknown or released particle) raise ValueError.
    After `run`: `batches` (every batch the method yielded), `nfe`, `verifier_calls` (scored requests), `live`
    (pids not released) and `max_live`. With `guided`, every guided move from a state without a gradient yet
    charges `GUIDED_STEP_NFE` more (counted in `gradients`)."""

    def __init__(
        self, method, ctx: SearchContext, reward: RewardFn | None = None, seed: int = 0, guided: Guided | None = None
    ) -> None:
        self.method, self.ctx, self.seed, self.guided = method, ctx, seed, guided
        if reward is None:
            rng = random.Random(seed)
            reward = lambda pid, parent, s, req: rng.gauss(0.0, 1.0)  # noqa: E731
        self.reward = reward
        self.batches: list[Batch] = []
        self.nfe = self.verifier_calls = self.max_live = self.gradients = 0
        self._graded: set[int] = set()  # live pids whose state has its reward gradient (guidance)
        self._cached: dict[int, bool] = {}  # live pid -> velocity cached (an evaluated state at s > 0)
        self._times: dict[int, float] = {}  # live pid -> time of its state

    @property
    def live(self) -> set[int]:
        return set(self._times)

    def run(self) -> SearchOutcome:
        gen = self.method.search(self.ctx, self.seed)
        batch: Batch = next(gen)
        while True:
            self.batches.append(batch)
            evals = self._evaluate(batch)
            self.max_live = max(self.max_live, len(self._times))
            for pid in batch.release:
                if pid not in self._times:
                    raise ValueError(f"release of unknown particle {pid}")
                del self._times[pid], self._cached[pid]
                self._graded.discard(pid)
            try:
                batch = gen.send(evals)
            except StopIteration as stop:
                return stop.value

    def _evaluate(self, batch: Batch) -> dict[int, Evaluation]:
        evals: dict[int, Evaluation] = {}
        first_move_paid: set[int] = set()  # children of one uncached parent share its evaluation
        for init in batch.inits:
            self._new(init.pid)
            evals[init.pid] = self._evaluated(init, None, self.ctx.grid[0], 1, cached=True)
        for exp in batch.expands:
            if exp.parent not in self._times:
                raise ValueError(f"expand of unknown or released particle {exp.parent}")
            self._new(exp.pid)
            spent, ok, s = 0, self._cached[exp.parent], self._times[exp.parent]
            for r, move in enumerate(exp.moves):
                if not move.renoise and not ok:
                    if r > 0 or exp.parent not in first_move_paid:
                        spent += 1
                    if r == 0:
                        first_move_paid.add(exp.parent)
                if not move.renoise and self.guided is not None and self.guided(s):
                    if r > 0 or exp.parent not in self._graded:  # a state's gradient is computed once
                        spent += GUIDED_STEP_NFE
                        self.gradients += 1
                    if r == 0:
                        self._graded.add(exp.parent)
                ok, s = False, move.s_to
            if not ok and s > 0:
                spent, ok = spent + 1, True
            evals[exp.pid] = self._evaluated(exp, exp.parent, s, spent, cached=ok)
        return evals

    def _new(self, pid: int) -> None:
        if pid in self._times:
            raise ValueError(f"pid {pid} reused")

    def _evaluated(self, req: Init | Expand, parent: int | None, s: float, spent: int, cached: bool) -> Evaluation:
        self._cached[req.pid], self._times[req.pid] = cached, s
        self.nfe += spent
        self.verifier_calls += req.score
        reward = float(self.reward(req.pid, parent, s, req)) if req.score else math.nan
        return Evaluation(req.pid, reward, s, spent)


def plan(method, ctx: SearchContext, top_k: int = 1, seed: int = 0, guided: Guided | None = None) -> Plan:
    """Run `method`'s search against the stand-in executor (`DryRun`); returns what it spent."""
    run = DryRun(method, ctx, seed=seed, guided=guided)
    outcome = run.run()
    finals = min(top_k, 1 + len([p for p in outcome.selected if p != outcome.best]))
    return Plan(nfe=run.nfe, verifier_calls=run.verifier_calls + finals)


def size_for_units(
    method, units: float, costs: Costs, ctx: SearchContext, top_k: int = 1, guided: Guided | None = None
):
    """`method` set up (through `with_budget`) for the largest NFE budget whose planned compute units are at most
    `units`. Raises ValueError when not even the smallest budget the method accepts fits."""
    hi = min(MAX_SIZED_NFE, max(1, int(units / costs.c_d))) if costs.c_d > 0 else MAX_SIZED_NFE
    if hi == MAX_SIZED_NFE:  # each plan is a dry run of the whole search: bound what may be sized
        try:
            largest = plan(method.with_budget(MAX_SIZED_NFE, ctx), ctx, top_k, guided=guided)
        except ValueError:
            largest = None
        if largest is not None and largest.units(costs) < units:
            raise ValueError(
                f"a budget of {units:g} compute units sizes {method.name} past {MAX_SIZED_NFE} NFE per search, the "
                f"most a compute-unit budget is sized to (c_d {costs.c_d:g}, c_v {costs.c_v:g})"
            )
    lo, best = 0, None
    while lo < hi:  # planned units grow with the NFE budget: bisect on it
        mid = (lo + hi + 1) // 2
        try:
            sized = method.with_budget(mid, ctx)
        except ValueError:
            lo = mid
            if lo >= hi:
                break
            continue
        if plan(sized, ctx, top_k, guided=guided).units(costs) <= units:
            best, lo = sized, mid
        else:
            hi = mid - 1
    if best is None:
        raise ValueError(
            f"a budget of {units:g} compute units does not pay for one search of {method.name} "
            f"(c_d {costs.c_d:g}, c_v {costs.c_v:g})"
        )
    return best


def sized(
    method, amount: float, unit: str, costs: Costs, ctx: SearchContext, top_k: int = 1, guided: Guided | None = None
):
    """`method` set up for a budget of `amount` in `unit` ('nfe': its `with_budget`, or with `guided` the largest
    budget whose NFE with the gradients' charge fit; 'compute': compute units)."""
    if unit == "nfe" and guided is None:
        return method.with_budget(int(amount), ctx)
    if unit == "nfe":
        try:
            return size_for_units(method, amount, Costs(1.0, 0.0), ctx, top_k, guided)
        except ValueError:
            raise ValueError(
                f"a budget of {amount:g} NFE does not pay for one guided search of {method.name} (each reward "
                f"gradient is charged {GUIDED_STEP_NFE} NFE)"
            ) from None
    return size_for_units(method, amount, costs, ctx, top_k, guided)


def planned_cost(
    method, unit: str, costs: Costs, ctx: SearchContext, top_k: int = 1, guided: Guided | None = None
) -> float:
    """What one search of `method` is charged in `unit`: its planned NFE, or its planned compute units."""
    if unit == "nfe" and guided is None:
        return float(method.planned_nfe(ctx))
    return plan(method, ctx, top_k, guided=guided).units(costs if unit != "nfe" else Costs(1.0, 0.0))
