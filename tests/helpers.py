"""Test helpers: sampling through the real engine, and a scripted executor for method unit tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import ParticleEngine
from flowscale_ray.models.base import FlowModel
from flowscale_ray.search.base import SearchMethod
from flowscale_ray.search.protocol import (
    STREAM_INIT,
    Batch,
    Evaluation,
    Expand,
    Init,
    Move,
    NoiseKey,
    SearchContext,
    SearchOutcome,
)


def sample_with_engine(model: FlowModel, spec: SamplerSpec, n: int, prompt_id: str = "p", seed: int = 0):
    """n independent trajectories from noise to t=0 through ParticleEngine (the production path)."""
    eng = ParticleEngine(model, spec)
    eng.open_task(0, prompt_id, "", seed)
    grid = eng.grid
    inits = tuple(Init(i, NoiseKey(i, 0, 0, STREAM_INIT), score=False) for i in range(n))
    eng.run([(0, Batch(inits=inits))])
    moves = lambda i: tuple(Move(grid[k], NoiseKey(i, k, 0)) for k in range(1, len(grid) - 1))  # noqa: E731
    exps = tuple(Expand(n + i, i, moves(i), score=False) for i in range(n))
    eng.run([(0, Batch(expands=exps, release=tuple(range(n))))])
    samples, _ = eng.finalize(0, [n + i for i in range(n)])
    return samples.to(torch.float64), eng


class ScriptedRun:
    """Drives a method's generator without any model: each created particle gets a reward from
    `reward_fn(pid, parent_pid or None, s, request)`, and NFE is charged by the engine's rules (a step from
    a state whose velocity is not cached costs 1, every evaluated state at s > 0 costs 1)."""

    def __init__(self, method: SearchMethod, grid: tuple[float, ...], reward_fn: Callable, seed: int = 0) -> None:
        self.method, self.grid, self.reward_fn, self.seed = method, grid, reward_fn, seed
        self.batches: list[Batch] = []
        self.live: set[int] = set()
        self.nfe = 0
        self.max_live = 0

    def run(self) -> SearchOutcome:
        gen = self.method.search(SearchContext(grid=self.grid), self.seed)
        batch = next(gen)
        while True:
            self.batches.append(batch)
            evals: dict[int, Evaluation] = {}
            for req in batch.inits:
                assert req.pid not in self.live, "pid reused"
                evals[req.pid] = self._eval(req, None, self.grid[0], 1)
            for req in batch.expands:
                assert req.parent in self.live, f"expand of unknown or released particle {req.parent}"
                assert req.pid not in self.live, "pid reused"
                s = req.moves[-1].s_to
                cost = sum(1 for i, m in enumerate(req.moves) if i > 0 and not m.renoise) + (1 if s > 0 else 0)
                evals[req.pid] = self._eval(req, req.parent, s, cost)
            self.live |= set(evals)
            self.max_live = max(self.max_live, len(self.live))
            for pid in batch.release:
                assert pid in self.live, f"release of unknown particle {pid}"
                self.live.discard(pid)
            try:
                batch = gen.send(evals)
            except StopIteration as stop:
                return stop.value

    def _eval(self, req: Init | Expand, parent: int | None, s: float, cost: int) -> Evaluation:
        self.nfe += cost
        score = req.score
        reward = float(self.reward_fn(req.pid, parent, s, req)) if score else math.nan
        return Evaluation(pid=req.pid, reward=reward, s=s, nfe=cost)


class LogLines(list):
    """The messages logged under `flowscale_ray` while the context is open (INFO and up)."""

    def __enter__(self):
        import logging

        class _Collect(logging.Handler):
            def emit(inner, record):
                self.append(record.getMessage())

        self._logger = logging.getLogger("flowscale_ray")
        self._handler = _Collect(logging.INFO)
        self._level = self._logger.level
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)
        return None
