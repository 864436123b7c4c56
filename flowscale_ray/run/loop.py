"""The run loop: every prompt of a job through an executor, each result into the run's output as it finishes.

A prompt whose search raises (or whose scoring or decoding raises) is isolated: the prompts that were in flight
are rerun one at a time, the culprit gets a `failed` row and the run goes on. A prompt whose row cannot be
written (RunOutput.add) gets a `failed` row too. Failures one after another point
at the machinery, not the prompts: after MAX_CONSECUTIVE_FAILURES the run stops, keeping committed shards.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowscale_ray.config import JobConfig
from flowscale_ray.errors import first_line
from flowscale_ray.execution import Executor, SearchTask, TaskResult
from flowscale_ray.io.storage import Redactor
from flowscale_ray.logs import get_logger, redacting
from flowscale_ray.observe.recorder import NULL_RECORDER, Recorder
from flowscale_ray.prompts import Prompt
from flowscale_ray.run.budget import BlockBudget, Target, job_cost, sized_for_job
from flowscale_ray.run.components import load_prompts, resolve_sampler_shift, sampler_check
from flowscale_ray.run.executors import open_executor
from flowscale_ray.run.output import RunOutput
from flowscale_ray.run.tables import format_table
from flowscale_ray.search.base import SearchMethod

log = get_logger(__name__)

MAX_CONSECUTIVE_FAILURES = 3  # prompts failing one after another in isolation: the fault is not the prompts'
PREVIEW_ROWS = 20


@dataclass
class RunReport:
    run_id: str
    uri: str  # the run's folder (credentials redacted)
    prompts: int
    ran: int  # prompts run by this call (the rest were committed before)
    manifest: dict[str, Any]
    elapsed: float
    nfe: int  # spent by this call
    failed: int  # prompts of this call whose search raised or whose row could not be written
    preview: list[TaskResult] = field(default_factory=list)  # the first few results of this call


def run_job(job: JobConfig, base_dir: Path | None = None) -> RunReport:
    """Run (or resume) a job; returns what was done. Bad input raises ConfigError before any work."""
    redact = Redactor.for_storage(job.storage)
    with redacting(redact):
        job = resolve_sampler_shift(job)
        prompts = load_prompts(job.prompts, base_dir, job.storage)
        output = RunOutput.open(job, prompts)
        done = output.existing()
        if done is not None:
            rows = done["counts"]["rows"]
            log.info(f"run {job.run_id} is already complete ({rows} rows); nothing to do: {output.uri}")
            return RunReport(job.run_id, output.uri, len(prompts), 0, done, 0.0, 0, 0)
        check, warns = sampler_check(job)
        if warns:
            log.warning(check.strip())
        method = job.method.build()
        if job.budget.per_prompt is not None:  # sized to the budget (in NFE or compute units)
            method = sized_for_job(job, method, job.budget.per_prompt)
        with open_executor(job) as executor:
            return _run(job, prompts, output, method, executor, redact)


def _run(
    job: JobConfig,
    prompts: list[Prompt],
    output: RunOutput,
    method: SearchMethod,
    executor: Executor,
    redact: Callable[[str], str],
) -> RunReport:
    todo = output.begin(executor.model_id, method.settings())
    planned = int(job_cost(job, method, "nfe"))
    spend = f"{planned} NFE/prompt"
    b = job.budget
    if b.mode == "dataset" and b.mean_nfe is not None:
        planned = int(b.mean_nfe)  # per prompt on average: what the progress display's ETA uses
        spend = f"dataset budget: {b.mean_nfe:g} NFE/prompt on average, rounds of {b.base_nfe}, then {b.per_round}"
    resumed = output.resumed_shards
    note = f"; resuming: {resumed} of {output.num_shards} shards already committed" if resumed is not None else ""
    log.info(
        f"job {job.name}: {len(prompts)} prompts, method {method.name} ({spend}), "
        f"sampler {job.sampler.label}, model {executor.model_id}, reward {job.reward.name}, "
        f"executor {job.executor.kind}{note}"
    )
    from flowscale_ray.observe.live import observe_run

    replicas = job.executor.replicas if job.executor.kind == "ray" else 1
    recorder = observe_run(
        job.metrics, method=method.name, model=executor.model_id, reward=job.reward.name, prompts=len(todo),
        planned_nfe=planned * len(todo), replicas=replicas,
    )  # fmt: skip
    executor.recorder = recorder
    output.on_retry = recorder.storage_retry
    output.on_commit = lambda _shard, stats: recorder.shard_committed(stats.rows, stats.bytes)
    started = time.perf_counter()
    nfe = failed = calls = 0
    work = {"model": 0.0, "reward": 0.0}  # seconds of model and of reward work of the finished prompts
    preview: list[TaskResult] = []
    # A failed prompt's row is held back until a later prompt succeeds: if the failures go on until the run
    # stops (a broken model, not bad prompts), they are not committed and the resumed run retries them.
    held_back: list[tuple[int, Exception]] = []

    def record_failures() -> None:
        for i, exc in held_back:
            output.add_failure(i, first_line(exc))
        held_back.clear()

    if job.budget.mode == "dataset":
        outcomes = _dataset_budget(job, output, method, executor, prompts, todo, redact, recorder)
    else:
        outcomes = run_prompts(
            executor, lambda i: SearchTask(prompts[i], method, job.seed), prompts, todo, redact, recorder
        )
    for index, outcome in outcomes:
        if isinstance(outcome, TaskResult):
            recorder.prompt_finished(outcome)
            record_failures()
            nfe += outcome.nfe
            calls += outcome.verifier_calls
            work["model"] += outcome.model_seconds
            work["reward"] += outcome.reward_seconds
            if not output.add(index, outcome):  # its row could not be written: a `failed` row instead
                failed += 1
            elif len(preview) < PREVIEW_ROWS:
                preview.append(outcome)
        else:
            recorder.prompt_failed()
            failed += 1
            held_back.append((index, outcome))
    record_failures()
    output.put_json("timeline.json", recorder.close())  # replica busy time over the run, for `flowscale report`
    manifest = output.finish()
    elapsed = time.perf_counter() - started
    if preview:
        log.info(format_table(preview))
    rate = nfe / max(elapsed, 1e-9)
    counts = manifest["counts"]
    log.info(
        f"{len(todo)} prompts run ({failed} failed), {nfe} NFE in {elapsed:.1f}s ({rate:.0f} NFE/s); "
        f"{counts['rows']} rows in {counts['shards']} shards: {output.uri}"
    )
    if nfe and calls:  # what c_d and c_v measure on this hardware (budgets use the configured ones)
        log.info(
            f"measured cost: {work['model'] / nfe * 1e3:.3g} ms of model work per NFE, "
            f"{work['reward'] / calls * 1e3:.3g} ms of reward work per verifier call "
            f"(budget.c_d {job.budget.c_d:g}, budget.c_v {job.budget.c_v:g})"
        )
    return RunReport(job.run_id, output.uri, len(prompts), len(todo), manifest, elapsed, nfe, failed, preview)


def _dataset_budget(
    job: JobConfig,
    output: RunOutput,
    method: SearchMethod,
    executor: Executor,
    prompts: list[Prompt],
    todo: list[int],
    redact: Callable[[str], str],
    recorder: Recorder,
) -> Iterator[tuple[int, TaskResult | Exception]]:
    """The dataset budget (flowscale_ray.run.budget): block by block (one output shard each), waves of rounds
    until the block's budget is spent; yields each prompt's merged result when its block is done."""

    cfg = job.budget
    assert cfg.mean_nfe is not None and cfg.base_nfe is not None and cfg.per_round is not None  # validated
    first, later = sized_for_job(job, method, cfg.base_nfe), sized_for_job(job, method, cfg.per_round)
    target = Target(cfg.target_reward, cfg.target_held_out)
    # Charged per round: exactly what it will spend (planned NFE, or planned compute units).
    costs = (job_cost(job, first), job_cost(job, later))
    for shard in sorted({output.shard_of(i) for i in todo}):
        block = [i for i in todo if output.shard_of(i) == shard]
        budget = BlockBudget(block, cfg.mean_nfe, *costs, target, cfg.max_rounds)
        recorder.budget_planned(budget.total)

        def task(i: int, budget: BlockBudget = budget) -> SearchTask:
            rounds = budget.prompts[i].rounds
            return SearchTask(prompts[i], first if rounds == 0 else later, job.seed, round=rounds)

        def run_wave(
            wave: list[int], number: int, task: Callable[[int], SearchTask] = task
        ) -> list[tuple[int, TaskResult | Exception]]:
            recorder.budget_spent(costs[0 if number == 0 else 1] * len(wave))
            return list(run_prompts(executor, task, prompts, wave, redact, recorder, count=number == 0))

        budget.run(run_wave)
        log.info(
            f"budget: shard {shard + 1}/{output.num_shards}: {budget.charged:g} of {budget.total:g} {cfg.unit} in "
            f"{budget.waves} "
            f"waves; {sum(p.stop == 'solved' for p in budget.prompts.values())} of {len(block)} prompts solved"
        )
        for i in block:
            p = budget.prompts[i]
            recorder.prompt_allocated(p.nfe, p.rounds, p.stop or "budget")
            output.allocation(i, p.rounds, p.stop)
            yield i, (p.merged() if p.best is not None else p.error or RuntimeError("no result"))


def run_prompts(
    executor: Executor,
    task: Callable[[int], SearchTask],
    prompts: list[Prompt],
    todo: list[int],
    redact: Callable[[str], str] = str,
    recorder: Recorder = NULL_RECORDER,
    count: bool = True,
) -> Iterator[tuple[int, TaskResult | Exception]]:
    """Run `task(i)` for the prompts at `todo` (`count`: they count as started prompts for progress), yielding
    (index, result) as they finish, or (index, the exception) for a prompt whose search raises. When a search
    raises, the prompts then in flight are rerun one at a time to find which one fails; after
    MAX_CONSECUTIVE_FAILURES failures in a row the error is raised instead (a broken model or reward, not a bad
    prompt): committed shards stay, and the run resumes from there."""
    index_of = {prompts[i].id: i for i in todo}
    queue = deque(todo)
    consecutive = 0

    def pull(pulled: list[int]) -> Iterator[SearchTask]:
        """Tasks from the queue as the executor asks for them, noting which were handed out."""
        while queue:
            i = queue.popleft()
            pulled.append(i)
            if count:
                recorder.prompt_started()
            yield task(i)

    while queue:
        pulled: list[int] = []
        done: set[int] = set()
        try:
            for result in executor.run(pull(pulled)):
                i = index_of[result.prompt.id]
                done.add(i)
                consecutive = 0
                yield i, result
        except Exception as exc:
            suspects = [i for i in pulled if i not in done]
            executor.discard_unfinished()
            log.info(
                f"a search raised ({redact(first_line(exc))}); rerunning the {len(suspects)} prompts in flight "
                "one at a time"
            )
            for i in suspects:
                try:
                    (result,) = list(executor.run([task(i)]))
                except Exception as single:
                    executor.discard_unfinished()
                    consecutive += 1
                    log.info(f"prompt {prompts[i].id} failed: {redact(first_line(single))}")
                    if consecutive >= MAX_CONSECUTIVE_FAILURES:
                        raise RuntimeError(
                            f"{consecutive} prompts failed in a row (last: {redact(first_line(single))}); stopping. "
                            "Committed shards are kept: fix the cause and run the job again to resume."
                        ) from single
                    yield i, single
                else:
                    consecutive = 0
                    yield i, result
