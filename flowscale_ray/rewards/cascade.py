"""A verifier cascade: a cheap reward scores every candidate, an expensive one only those that pass.

options:
  cheap:        {name, options}: scores every row
  expensive:    {name, options}: scores the rows that pass the cheap stage
  top_fraction: a row passes when it is among the ceil(top_fraction x n) best cheap scores of the n rows of its
                prompt in this call (at least one row passes; ties broken by position)
  threshold:    or: a row passes when its cheap score is >= threshold
  floor:        the lowest score the expensive reward can give (default -1e6)

Give exactly one of top_fraction and threshold. A passed row scores its expensive score (so a cascade's values are
the expensive reward's own, comparable with it used alone). A row that does not pass scores
floor - 1 + (atan(cheap) / pi + 1/2), a value in (floor - 1, floor) that keeps the cheap order among such rows:
strictly below every passed row of any call, so a search that keeps its best candidate ends on a passed one, and
the final choice of a batch equals the expensive reward's choice whenever that candidate passed. An expensive score
below `floor` is refused (it would break that ordering).

What a row holds, and the final scores: the executor scores a prompt's final sample with the cascade too; alone in
its call it always passes a top_fraction cascade (its reward is the expensive score); under a threshold it passes
only when its cheap score clears the threshold (else its reward is below `floor`, which `output.min_reward` can
filter). With `output.top_k` > 1 the k final samples are one call, and the fraction applies to them.

Batches. The top fraction is taken over the rows of each prompt in one reward call. In process, a call holds a
prompt's whole batch of candidates (BoN's N, SVDD's chains x children, SMC's particles); RBF draws one candidate per
chain at a time, so its batches are small (a threshold suits it better). On Ray a wide batch may be split over
replicas, and each part is a call of its own: the fraction then applies per part. A threshold cascade is a function
of each row alone and gives the same values everywhere.

Charging. A row's `verifier_calls` (and so the `c_v` term of its compute units) counts the expensive stage's calls:
the passed candidates and final samples, which are exactly the scores >= floor. The cheap stage is charged by time
only (the prompt's `reward_seconds` holds both stages). The cascade also counts both stages' rows itself
(`calls["cheap"]`, `calls["expensive"]`, cumulative in the process that holds it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward, as_reward_tensor, build_reward

STAGE_KEYS = ("name", "options")


def stage(spec: Any, field: str) -> Reward:
    """A stage given as {name, options} (or, from code, a Reward)."""
    if isinstance(spec, Reward):
        return spec
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"reward.{field}: expected a mapping with 'name' (and 'options'), got {spec!r}")
    unknown = sorted(set(spec) - set(STAGE_KEYS))
    if unknown:
        raise ValueError(f"reward.{field}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(STAGE_KEYS)}")
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"reward.{field}.options: expected a mapping, got {options!r}")
    return build_reward(str(spec["name"]), options)


def _number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"reward.{field}: expected a finite number, got {value!r}")
    return float(value)


def below_floor(cheap: Tensor, floor: float) -> Tensor:
    """Scores of rows that did not pass: in (floor - 1, floor), increasing with the cheap score."""
    squashed = torch.atan(cheap.to(torch.float64)) / math.pi + 0.5  # (0, 1), slow to saturate
    return torch.clamp(floor - 1.0 + squashed, max=math.nextafter(floor, -math.inf))


def top_rows(values: list[float], fraction: float) -> list[int]:
    """Indices of the ceil(fraction x n) largest values (at least one), ties to the earlier row."""
    k = max(1, math.ceil(fraction * len(values) - 1e-9))
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


class Cascade(Reward):
    name = "cascade"

    def __init__(
        self,
        cheap: dict[str, Any] | Reward,
        expensive: dict[str, Any] | Reward,
        top_fraction: float | None = None,
        threshold: float | None = None,
        floor: float = -1e6,
    ) -> None:
        if (top_fraction is None) == (threshold is None):
            raise ValueError(
                f"reward: a cascade takes exactly one of top_fraction and threshold, got top_fraction={top_fraction!r}"
                f" and threshold={threshold!r}"
            )
        if top_fraction is not None:
            top_fraction = _number("top_fraction", top_fraction)
            if not 0 < top_fraction <= 1:
                raise ValueError(f"reward.top_fraction: expected a number in (0, 1], got {top_fraction!r}")
        self.top_fraction = top_fraction
        self.threshold = None if threshold is None else _number("threshold", threshold)
        self.floor = _number("floor", floor)
        self.cheap = stage(cheap, "cheap")
        self.expensive = stage(expensive, "expensive")
        self.calls = {"cheap": 0, "expensive": 0}  # rows each stage scored, cumulative

    @staticmethod
    def charge(options: dict[str, Any]) -> Callable[[Sequence[float]], int]:
        """The expensive stage's calls behind a call's scores, from the options alone (passed rows score >= floor)."""
        floor = _number("floor", options.get("floor", -1e6))
        return lambda values: sum(1 for v in values if v >= floor)

    def verifier_calls(self, values: Sequence[float]) -> int:
        return sum(1 for v in values if v >= self.floor)

    def passed(self, cheap: Tensor, prompts: Sequence[Prompt | str]) -> Tensor:
        """Which rows go on to the expensive stage, [B] bool."""
        if self.threshold is not None:
            return cheap >= self.threshold
        assert self.top_fraction is not None
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p if isinstance(p, str) else p.id, []).append(i)
        mask = torch.zeros(len(prompts), dtype=torch.bool)
        values = cheap.tolist()
        for rows in groups.values():
            for j in top_rows([values[i] for i in rows], self.top_fraction):
                mask[rows[j]] = True
        return mask

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        n = samples.shape[0]
        if n != len(prompts):
            raise ValueError(f"{n} samples but {len(prompts)} prompts")
        cheap = as_reward_tensor(self.cheap(samples, prompts), n)
        self.calls["cheap"] += n
        mask = self.passed(cheap, prompts)
        out = below_floor(cheap, self.floor)
        index = mask.nonzero().reshape(-1)
        if index.numel():
            rows = index.tolist()
            chosen = samples[index.to(samples.device)]
            values = as_reward_tensor(self.expensive(chosen, [prompts[i] for i in rows]), len(rows))
            self.calls["expensive"] += len(rows)
            low = values.min()
            if low < self.floor:
                raise ValueError(
                    f"reward.floor: the expensive reward scored {float(low):g}, below floor {self.floor:g}; set "
                    "floor to at most the lowest score it can give"
                )
            out[index] = values
        return out
