"""Test helpers: sampling through the real engine, and a scripted executor for method unit tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import ParticleEngine
from flowscale_ray.models.base import FlowModel
from flowscale_ray.search.base import SearchMethod
from flowscale_ray.search.plan import DryRun
from flowscale_ray.search.protocol import (
    STREAM_INIT,
    Batch,
    Evaluation,
    Expand,
    Init,
    Move,
    NoiseKey,
    SearchContext,
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


class ScriptedRun(DryRun):
    """Drives a method's generator without any model (`search.plan.DryRun`, the executors' NFE rule): each
    created particle gets a reward from `reward_fn(pid, parent_pid or None, s, request)`. Stricter than the
    executors in one way: an expand must start from a particle of an earlier batch."""

    def __init__(self, method: SearchMethod, grid: tuple[float, ...], reward_fn: Callable, seed: int = 0) -> None:
        super().__init__(method, SearchContext(grid=grid), reward_fn, seed)
        self.grid = grid

    def _evaluate(self, batch: Batch) -> dict[int, Evaluation]:
        for req in batch.expands:
            assert req.parent in self.live, f"expand of unknown or released particle {req.parent}"
        return super()._evaluate(batch)


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
