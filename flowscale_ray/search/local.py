"""Local search around a search's pick (`polish`): spend the end of a budget near the best final sample.

A try renoises the current best final sample back `depth` grid steps with the forward kernel (Search over Paths'
move; no NFE) and denoises it again along the grid (`depth` NFE); `width` tries go in one batch, all from the
current best, and the best try replaces it only when it scores strictly higher. So the pick never gets worse.
Meant for rewards whose misses are near misses (on the counting task a search's misses are almost all one object
off); a try does not stay as close to the pick as that suggests (a depth-3 try keeps an exact counting sample
exact about a third of the time, docs/adaptive.md), so it is a cheap, monotone end to the budget rather than a
small edit.

Each batch of tries is one step record (`extra`: {"polish": true, "improved": whether the pick changed}; not
counted as budget forcing's accepts). Budget: `local_nfe(budget, share, depth)` NFE, a whole number of tries
(`depth` each) and at most `share` of the budget; the search before it gets the rest, so the two together spend
the budget exactly.
"""

from __future__ import annotations

from flowscale_ray.search.base import positive
from flowscale_ray.search.protocol import (
    STREAM_RENOISE,
    STREAM_STEP,
    Batch,
    Expand,
    Move,
    NoiseKey,
    PidCounter,
    SearchContext,
    SearchGenerator,
    SearchOutcome,
    StepRecord,
)

# Noise keys of the tries: chain indices from here on (a search's own chains are numbered from 0).
TRY_CHAIN_BASE = 10_000


def check_local_settings(share: float, depth: int, width: int) -> None:
    if not 0.0 <= share < 1.0:
        raise ValueError(f"polish: must be in [0, 1) (the share of the budget for local search), got {share}")
    positive("polish_depth", depth)
    positive("polish_width", width)


def local_nfe(budget: int, share: float, depth: int) -> int:
    """NFE of the local search out of `budget`: the most whole tries of `depth` NFE within share x budget."""
    return depth * int(budget * share // depth)


def check_depth(depth: int, ctx: SearchContext) -> None:
    if depth > ctx.steps - 1:
        raise ValueError(f"polish_depth: {depth} grid steps back is more than this grid allows ({ctx.steps - 1})")


def renoise_try(pid: int, parent: int, grid: tuple[float, ...], depth: int, chain: int) -> Expand:
    """One try from the final state `parent`: renoise back `depth` grid steps, then the grid's steps down to 0; its
    noise keys are `chain`'s (step 0 the renoise, 1.. the steps)."""
    steps = (Move(s, NoiseKey(chain, k + 1, 0, STREAM_STEP)) for k, s in enumerate(grid[len(grid) - depth :]))
    renoise = Move(grid[len(grid) - 1 - depth], NoiseKey(chain, 0, 0, STREAM_RENOISE), renoise=True)
    return Expand(pid, parent, (renoise, *steps))


def polish(
    ctx: SearchContext, outcome: SearchOutcome, nfe: int, depth: int, width: int, new_pid: PidCounter
) -> SearchGenerator:
    """Local search from `outcome`'s pick (a final state, s = 0) with `nfe` NFE (a multiple of `depth`); returns
    the outcome with the pick replaced where a try beat it, the tries' records added and their NFE counted."""
    best, best_reward = outcome.best, outcome.reward
    records, spent, tries_done = list(outcome.records), 0, 0
    release: tuple[int, ...] = ()
    while spent + depth <= nfe:
        n = min(width, (nfe - spent) // depth)
        tries = [
            renoise_try(new_pid(), best, ctx.grid, depth, TRY_CHAIN_BASE + t) for t in range(tries_done, tries_done + n)
        ]
        tries_done += n
        evals = yield Batch(expands=tuple(tries), release=release)
        batch_nfe = sum(evals[e.pid].nfe for e in tries)
        spent += batch_nfe
        top = max(tries, key=lambda e: evals[e.pid].reward)  # the first of equal rewards
        release = tuple(e.pid for e in tries if e.pid != top.pid)
        improved = evals[top.pid].reward > best_reward
        if improved:
            release += (best,)
            best, best_reward = top.pid, evals[top.pid].reward
        else:
            release += (top.pid,)
        records.append(
            StepRecord(
                step=ctx.steps, s=0.0, nfe=batch_nfe, candidates=n,
                best_reward=best_reward, extra={"polish": True, "improved": improved},
            )
        )  # fmt: skip
    # the last batch's losers are freed with the rest of the task when the search returns
    selected = [best] + [p for p in outcome.selected if p not in (best, outcome.best)]
    return SearchOutcome(best=best, reward=best_reward, nfe=outcome.nfe + spent, records=records, selected=selected)
