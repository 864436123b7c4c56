"""What an executor is given (SearchTask) and what it returns (TaskResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.search.base import SearchMethod
from flowscale_ray.search.protocol import Expand, Init, SearchOutcome


@dataclass(frozen=True)
class SearchTask:
    prompt: Prompt
    method: SearchMethod
    seed: int  # run seed (the prompt's own seed overrides it when set)

    @property
    def effective_seed(self) -> int:
        return self.prompt.seed if self.prompt.seed is not None else self.seed


@dataclass
class TaskResult:
    prompt: Prompt
    outcome: SearchOutcome
    sample: Tensor  # final sample at t = 0 on the sampled path [*latent_shape]
    image: Tensor  # decoded sample (what the reward scores)
    reward: float  # reward of the final sample
    held_out: float | None
    nfe: int  # velocity evaluations counted by the executor
    lineage: list[Init | Expand]  # requests from the root to the selected particle: enough to replay it
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
