"""In-process executor: drives search generators against one ParticleEngine in this process.

Many prompts can be in flight at once (`in_flight`): their batches are pooled into the same model calls,
which is what the Ray runtime does across replicas. Results do not depend on `in_flight`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from flowscale_ray.core.noise import derive_seed
from flowscale_ray.execution.engine import Evaluated, ParticleEngine
from flowscale_ray.execution.tasks import SearchTask, TaskResult
from flowscale_ray.observe.recorder import NULL_RECORDER, CallStats, Recorder
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward, as_reward_tensor
from flowscale_ray.search.protocol import (
    STREAM_DECISION,
    Batch,
    Evaluation,
    Expand,
    Init,
    SearchContext,
    SearchGenerator,
    SearchOutcome,
)


def decision_seed(run_seed: int, prompt_id: str) -> int:
    """Seed for a method's own random decisions (e.g. SMC resampling) on one prompt."""
    return derive_seed(run_seed, prompt_id, STREAM_DECISION)


@dataclass
class _Running:
    key: int
    task: SearchTask
    gen: SearchGenerator
    batch: Batch
    started: float
    nfe: int = 0
    lineage: dict[int, Init | Expand] = field(default_factory=dict)
    rewards: dict[int, float] = field(default_factory=dict)  # last search reward per particle


@dataclass
class SelectedSample:
    """One finalized particle of `outcome.selected` (TaskResult.extra["selected"], best search reward first)."""

    pid: int
    sample: torch.Tensor
    image: torch.Tensor
    reward: float  # of the final sample
    held_out: float | None
    search_reward: float  # at the particle's last search evaluation
    lineage: list[Init | Expand]


def score(reward: Reward, previews: Sequence[torch.Tensor], prompts: Sequence[Prompt]) -> list[float]:
    if not previews:
        return []
    values = as_reward_tensor(reward(torch.stack(list(previews)), prompts), len(previews))
    return values.tolist()


def lineage_of(lineage: dict[int, Init | Expand], pid: int) -> list[Init | Expand]:
    chain: list[Init | Expand] = []
    while True:
        req = lineage[pid]
        chain.append(req)
        if isinstance(req, Init):
            return chain[::-1]
        pid = req.parent


class InProcessExecutor:
    def __init__(
        self,
        engine: ParticleEngine,
        reward: Reward,
        held_out: Reward | None = None,
        in_flight: int = 1,
        top_k: int = 1,
    ) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight: must be >= 1, got {in_flight}")
        if top_k < 1:
            raise ValueError(f"top_k: must be >= 1, got {top_k}")
        self.engine = engine
        self.reward = reward
        self.held_out = held_out
        self.in_flight = in_flight
        self.top_k = top_k  # particles of outcome.selected finalized per prompt (extra["selected"])
        self.context = SearchContext(grid=engine.grid)
        self.recorder: Recorder = NULL_RECORDER  # metrics and progress hooks (flowscale_ray.observe)
        self._reward_seconds = 0.0

    def run(self, tasks: Iterable[SearchTask]) -> Iterator[TaskResult]:
        """Yield one TaskResult per task, in completion order (which equals task order when in_flight=1)."""
        pending = iter(enumerate(tasks))
        running: dict[int, _Running] = {}
        while True:
            while len(running) < self.in_flight:
                nxt = next(pending, None)
                if nxt is None:
                    break
                key, task = nxt
                run = self._start(key, task)
                if run is not None:
                    running[key] = run
            if not running:
                return
            started, nfe_before, self._reward_seconds = time.perf_counter(), self.engine.nfe, 0.0
            outputs = self.engine.run([(r.key, r.batch) for r in running.values()])
            step_seconds = time.perf_counter() - started
            rows = sum(len(r.batch) for r in running.values())
            finished = []
            for key in list(running):
                run = running[key]
                evals = self._evaluations(run, outputs[key])
                try:
                    run.batch = run.gen.send(evals)
                except StopIteration as stop:
                    del running[key]
                    finished.append((run, stop.value))
            busy = time.perf_counter() - started
            nfe = self.engine.nfe - nfe_before
            self.recorder.replica_call(0, CallStats(busy, step_seconds, self._reward_seconds, rows, nfe))
            for run, outcome in finished:
                yield self._finish(run, outcome)

    def _start(self, key: int, task: SearchTask) -> _Running:
        seed = task.effective_seed
        self.engine.open_task(key, task.prompt.id, task.prompt.text, seed)
        gen = task.method.search(self.context, decision_seed(seed, task.prompt.id))
        run = _Running(key=key, task=task, gen=gen, batch=next(gen), started=time.perf_counter())
        return run

    def _evaluations(self, run: _Running, outputs: list[Evaluated]) -> dict[int, Evaluation]:
        for req in (*run.batch.inits, *run.batch.expands):
            run.lineage[req.pid] = req
        scored = [o for o in outputs if o.preview is not None]
        started = time.perf_counter()
        rewards = score(self.reward, [o.preview for o in scored], [run.task.prompt] * len(scored))  # type: ignore[misc]
        self._reward_seconds += time.perf_counter() - started
        by_pid = {o.pid: r for o, r in zip(scored, rewards, strict=True)}
        evals = {}
        for o in outputs:
            run.nfe += o.nfe
            evals[o.pid] = Evaluation(pid=o.pid, reward=by_pid.get(o.pid, math.nan), s=o.s, nfe=o.nfe)
            run.rewards[o.pid] = evals[o.pid].reward
        self.recorder.batch_evaluated(sum(o.nfe for o in outputs), rewards)
        return evals

    def _finish(self, run: _Running, outcome) -> TaskResult:
        pids = selected_pids(outcome, self.top_k)
        samples, images = self.engine.finalize(run.key, pids)
        prompts = [run.task.prompt] * len(pids)
        rewards = score(self.reward, list(images), prompts)
        helds = score(self.held_out, list(images), prompts) if self.held_out is not None else None
        self.engine.close_task(run.key)
        return build_result(
            run.task, outcome, pids, samples, images, rewards, helds, run.lineage, run.rewards, run.nfe, run.started
        )


def selected_pids(outcome: SearchOutcome, top_k: int) -> list[int]:
    """The best first, then the next of `selected` up to top_k (the best alone when top_k is 1)."""
    return [outcome.best, *[p for p in outcome.selected if p != outcome.best][: top_k - 1]]


def build_result(
    task: SearchTask,
    outcome: SearchOutcome,
    pids: Sequence[int],
    samples: torch.Tensor,
    images: torch.Tensor,
    rewards: Sequence[float],
    helds: Sequence[float] | None,
    lineage: dict[int, Init | Expand],
    search_rewards: dict[int, float],
    nfe: int,
    started: float,
) -> TaskResult:
    """A TaskResult for finalized particles `pids` (the best first); shared by every executor."""
    selected = [
        SelectedSample(
            pid=pid,
            sample=samples[i],
            image=images[i],
            reward=rewards[i],
            held_out=helds[i] if helds is not None else None,
            search_reward=outcome.reward if pid == outcome.best else search_rewards.get(pid, math.nan),
            lineage=lineage_of(lineage, pid),
        )
        for i, pid in enumerate(pids)
    ]
    return TaskResult(
        prompt=task.prompt,
        outcome=outcome,
        sample=samples[0],
        image=images[0],
        reward=rewards[0],
        held_out=selected[0].held_out,
        nfe=nfe,
        lineage=selected[0].lineage,
        seconds=time.perf_counter() - started,
        extra={"selected": selected},
    )
