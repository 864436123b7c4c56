"""Search-method base class and in-process registration (the registry itself is `search.registry`).

Each method has a frozen `Config` dataclass (validated in `__post_init__`, unknown keys rejected by the
job loader) and a `search(ctx, seed)` generator speaking the protocol in `protocol.py`. `planned_nfe(ctx)`
states exactly what the method will spend; tests check it against what the executor counted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from flowscale_ray.search.protocol import Evaluation, SearchContext, SearchGenerator
from flowscale_ray.search.registry import METHODS

__all__ = [
    "METHODS",
    "SearchMethod",
    "argmax_first",
    "decision_generator",
    "per_round",
    "positive",
    "rank_desc",
    "register_method",
    "spent",
]


class SearchMethod(ABC):
    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        """The search as a generator (see protocol). `seed` seeds method-side decisions only."""

    @abstractmethod
    def planned_nfe(self, ctx: SearchContext) -> int:
        """The exact number of velocity evaluations `search` spends on this grid."""

    def with_budget(self, nfe: int, ctx: SearchContext) -> SearchMethod:
        """This method set up to spend at most `nfe` velocity evaluations on this grid (its `planned_nfe` is
        then <= nfe): one round of a dataset budget. Raises ValueError naming what the budget cannot pay."""
        raise ValueError(f"{self.name} cannot take a budget per round; use bon, rbf, smc, svdd or code")

    def settings(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": self.name, **asdict(self.config)}


def register_method(cls: type[SearchMethod]) -> type[SearchMethod]:
    """Decorator: register a method class under its `name` in this process (built-ins and plugins need not)."""
    return METHODS.register(cls.name, cls)


def per_round(nfe: int, unit: int, what: str) -> int:
    """How many `what`s of `unit` NFE each a round of `nfe` pays for (at least one, else ValueError)."""
    count = nfe // unit
    if count < 1:
        raise ValueError(f"a round of {nfe} NFE cannot pay one {what} ({unit} NFE)")
    return count


def argmax_first(values: list[float]) -> int:
    """Index of the first maximal value (ties go to the earliest, like torch.argmax); NaN never wins."""
    best, best_i = float("-inf"), 0
    for i, v in enumerate(values):
        if v > best:
            best, best_i = v, i
    return best_i


def rank_desc(values: list[float]) -> list[int]:
    """Indices sorted by value, best first, ties by position (stable)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def spent(evals: dict[int, Evaluation]) -> int:
    """NFE spent by one batch."""
    return sum(e.nfe for e in evals.values())


def decision_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
