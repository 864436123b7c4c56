"""Search methods: Best-of-N, Search over Paths, SMC, CoDe, SVDD and Rollover Budget Forcing.

Methods decide; they never call a model (see protocol.py). Importing this package registers them all.
"""

from flowscale_ray.search import best_of_n, code, rbf, search_over_paths, smc  # noqa: F401  (registration)
from flowscale_ray.search.base import METHODS, SearchMethod, register_method
from flowscale_ray.search.protocol import (
    Batch,
    Evaluation,
    Expand,
    Init,
    Move,
    NoiseKey,
    SearchContext,
    SearchOutcome,
    StepRecord,
)

__all__ = [
    "METHODS",
    "Batch",
    "Evaluation",
    "Expand",
    "Init",
    "Move",
    "NoiseKey",
    "SearchContext",
    "SearchMethod",
    "SearchOutcome",
    "StepRecord",
    "register_method",
]
