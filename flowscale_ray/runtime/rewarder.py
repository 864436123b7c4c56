"""RewardWorker: a reward model in its own actor (its own GPU), scoring previews in batches.

Used when `reward_actors > 0`: model replicas then put each call's decoded previews into the object store
and return a reference; the driver hands the reference to a reward actor (the previews never pass through
the driver). Stateless, so a failed scoring call is simply sent again.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from flowscale_ray.execution.inprocess import score
from flowscale_ray.prompts import Prompt
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.runtime.replica import build_reward_from


class RewardWorker:
    def __init__(self, reward: ComponentSpec, held_out: ComponentSpec | None) -> None:
        built = build_reward_from(reward)
        assert built is not None
        self.reward = built
        self.held_out = build_reward_from(held_out)
        self.busy_seconds = 0.0
        self.calls = 0
        gc.freeze()

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "reward": self.reward.name}

    def score(
        self, rows: Sequence[tuple[Any, Prompt, Sequence[int]]], previews: torch.Tensor
    ) -> dict[Any, list[float]]:
        """rows: (task key, prompt, row indices into previews). Returns the rewards per task, in row order."""
        started = time.perf_counter()
        out = {}
        for key, prompt, index in rows:
            out[key] = score(self.reward, list(previews[list(index)]), [prompt] * len(index))
        self.busy_seconds += time.perf_counter() - started
        self.calls += 1
        return out

    def score_final(self, prompt: Prompt, images: torch.Tensor) -> dict[str, list[float]]:
        out = {"rewards": score(self.reward, list(images), [prompt] * images.shape[0])}
        if self.held_out is not None:
            out["held_out"] = score(self.held_out, list(images), [prompt] * images.shape[0])
        return out

    def stats(self) -> dict[str, Any]:
        return {"busy_seconds": self.busy_seconds, "calls": self.calls}
