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

from flowscale_ray.execution.engine import Evaluated, ParticleEngine
from flowscale_ray.execution.tasks import (
    SearchTask,
    TaskResult,
    build_result,
    decision_seed,
    selected_pids,
)
from flowscale_ray.observe.recorder import NULL_RECORDER, CallStats, Recorder
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward, as_reward_tensor, charged_calls
from flowscale_ray.search.protocol import (
    Batch,
    Evaluation,
    Expand,
    Init,
    SearchContext,
    SearchGenerator,
    SearchOutcome,
)


@dataclass
class _Running:
    key: int
    task: SearchTask
    gen: SearchGenerator
    batch: Batch
    started: float
    nfe: int = 0
    verifier_calls: int = 0
    model_seconds: float = 0.0  # its share of the pooled model batches
    reward_seconds: float = 0.0
    lineage: dict[int, Init | Expand] = field(default_factory=dict)
    rewards: dict[int, float] = field(default_factory=dict)  # last search reward per particle


def score(reward: Reward, previews: Sequence[torch.Tensor], prompts: Sequence[Prompt]) -> list[float]:
    if not previews:
        return []
    values = as_reward_tensor(reward(torch.stack(list(previews)), prompts), len(previews))
    return values.tolist()


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
        if engine.spec.guided and engine.guide is None:
            engine.guide = reward  # gradient guidance differentiates the search's reward (core.guidance)
        self.held_out = held_out
        self.in_flight = in_flight
        self.top_k = top_k  # particles of outcome.selected finalized per prompt (TaskResult.selected)
        self.context = SearchContext(grid=engine.grid)
        self.recorder: Recorder = NULL_RECORDER  # metrics and progress hooks (flowscale_ray.observe)
        self._reward_seconds = 0.0

    @property
    def model_id(self) -> str:
        return self.engine.model.model_id

    def discard_unfinished(self) -> None:
        """Drop the state of searches that were cut short by an exception."""
        for key in list(self.engine.tasks):
            self.engine.close_task(key)

    def close(self) -> None:
        self.discard_unfinished()

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
            for r in running.values():  # the pooled model time, split by each prompt's requests in it
                r.model_seconds += step_seconds * len(r.batch) / max(rows, 1)
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
        self.engine.open_task(key, task.prompt.id, task.prompt.text, seed, prompt=task.prompt)
        gen = task.method.search(self.context, decision_seed(seed, task.prompt.id))
        run = _Running(key=key, task=task, gen=gen, batch=next(gen), started=time.perf_counter())
        return run

    def _evaluations(self, run: _Running, outputs: list[Evaluated]) -> dict[int, Evaluation]:
        requests: list[Init | Expand] = [*run.batch.inits, *run.batch.expands]
        for req in requests:
            run.lineage[req.pid] = req
        scored = [o for o in outputs if o.preview is not None]
        started = time.perf_counter()
        rewards = score(self.reward, [o.preview for o in scored], [run.task.prompt] * len(scored))  # type: ignore[misc]
        elapsed = time.perf_counter() - started
        run.reward_seconds += elapsed
        self._reward_seconds += elapsed
        run.verifier_calls += charged_calls(self.reward, rewards)  # one per scored row, unless a cascade
        by_pid = {o.pid: r for o, r in zip(scored, rewards, strict=True)}
        evals = {}
        for o in outputs:
            run.nfe += o.nfe
            evals[o.pid] = Evaluation(pid=o.pid, reward=by_pid.get(o.pid, math.nan), s=o.s, nfe=o.nfe)
            run.rewards[o.pid] = evals[o.pid].reward
        self.recorder.batch_evaluated(sum(o.nfe for o in outputs), rewards)
        return evals

    def _finish(self, run: _Running, outcome: SearchOutcome) -> TaskResult:
        pids = selected_pids(outcome, self.top_k)
        started = time.perf_counter()
        samples, images = self.engine.finalize(run.key, pids)
        prompts = [run.task.prompt] * len(pids)
        scoring = time.perf_counter()
        rewards = score(self.reward, list(images), prompts)
        run.model_seconds += scoring - started
        run.reward_seconds += time.perf_counter() - scoring  # the verifier's work; the held-out score is not
        helds = score(self.held_out, list(images), prompts) if self.held_out is not None else None
        self.engine.close_task(run.key)
        return build_result(
            run.task,
            outcome,
            pids,
            samples,
            images,
            rewards,
            helds,
            run.lineage,
            run.rewards,
            run.nfe,
            run.started,
            run.verifier_calls,
            run.model_seconds,
            run.reward_seconds,
            final_calls=charged_calls(self.reward, rewards),
        )
