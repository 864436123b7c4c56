"""Search methods: Best-of-N, Search over Paths, SMC, CoDe, SVDD and Rollover Budget Forcing.

Methods decide; they never call a model (see protocol.py). `METHODS` (search.registry) maps names to
method classes, importing a method's module only when its name is looked up; plugins add methods through the
entry-point group `flowscale_ray.methods` (docs/plugins.md).
"""

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
