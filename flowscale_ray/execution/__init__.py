"""Executors: they compute what search methods ask for. In-process here; the Ray runtime elsewhere."""

from flowscale_ray.execution.engine import ParticleEngine
from flowscale_ray.execution.inprocess import InProcessExecutor
from flowscale_ray.execution.tasks import Executor, SearchTask, SelectedSample, TaskResult

__all__ = ["Executor", "InProcessExecutor", "ParticleEngine", "SearchTask", "SelectedSample", "TaskResult"]
