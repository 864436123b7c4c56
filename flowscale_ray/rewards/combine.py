"""A weighted sum of rewards: r = sum_i w_i r_i, each term built like any reward from {name, weight, options}."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward, as_reward_tensor, build_reward

TERM_KEYS = ("name", "weight", "options")


class WeightedSum(Reward):
    """options: terms: [{name: jpeg_compressibility, weight: 0.1, options: {}}, ...] (weight defaults to 1)."""

    name = "weighted_sum"

    def __init__(self, terms: list[dict[str, Any]]) -> None:
        if not isinstance(terms, list) or not terms:
            raise ValueError(f"reward.terms: expected a non-empty list of {{name, weight, options}}, got {terms!r}")
        self.terms: list[tuple[str, float, Reward]] = []
        for i, term in enumerate(terms):
            field = f"reward.terms[{i}]"
            if not isinstance(term, dict) or "name" not in term:
                raise ValueError(f"{field}: expected a mapping with 'name' (and 'weight', 'options'), got {term!r}")
            unknown = sorted(set(term) - set(TERM_KEYS))
            if unknown:
                raise ValueError(f"{field}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TERM_KEYS)}")
            weight = term.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ValueError(f"{field}.weight: expected a number, got {weight!r}")
            options = term.get("options") or {}
            if not isinstance(options, dict):
                raise ValueError(f"{field}.options: expected a mapping, got {options!r}")
            self.terms.append((str(term["name"]), float(weight), build_reward(str(term["name"]), options)))

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        total = torch.zeros(samples.shape[0], dtype=torch.float64)
        for _, weight, reward in self.terms:
            total = total + weight * as_reward_tensor(reward(samples, prompts), samples.shape[0])
        return total
