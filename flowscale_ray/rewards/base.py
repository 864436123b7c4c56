"""The reward contract and building rewards by name.

A reward maps decoded samples (images [B, C, H, W] in [0, 1], or analytic samples [B, D]) and the prompt
of each row to one float per row; higher is better. Rewards never count as NFE.

Names resolve through `rewards.registry.REWARDS` (built-ins, loaded lazily, and plugins of the entry-point
group `flowscale_ray.rewards`, see docs/plugins.md). Code can also register a class or function in-process
(`@register_reward("name")`), and a job file can name any as 'package.module:attribute'. A plain callable
`f(samples, prompts) -> Tensor` is accepted and wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.registry import REWARDS, RewardFactory


class Reward:
    """Base class. Subclasses implement `__call__` and set `name`."""

    name: str = "reward"

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        raise NotImplementedError


class FunctionReward(Reward):
    def __init__(self, fn: Callable[[Tensor, Sequence[Prompt]], Tensor], name: str) -> None:
        self.fn = fn
        self.name = name

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        return self.fn(samples, prompts)


__all__ = ["REWARDS", "FunctionReward", "Reward", "as_reward_tensor", "build_reward", "register_reward"]


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Decorator: register a reward class, factory or function under `name` in this process."""

    def wrap(factory: RewardFactory) -> RewardFactory:
        return REWARDS.register(name, factory)

    return wrap


def build_reward(name: str, options: dict[str, Any] | None = None) -> Reward:
    """Build a registered, built-in or plugin reward, or one given as 'package.module:attribute' (class,
    factory or function)."""
    if name in REWARDS:
        obj: Any = REWARDS[name]
    elif ":" in name:
        from flowscale_ray.utils import import_object

        obj = import_object(name)
    else:
        raise ValueError(
            f"reward.name: unknown reward {name!r}; allowed: {', '.join(sorted(REWARDS))} or 'module:attribute'"
        )
    options = options or {}
    if isinstance(obj, type):
        reward = obj(**options)
    elif callable(obj) and not options and _is_plain_reward_fn(obj):
        reward = obj
    else:
        reward = obj(**options)
    if isinstance(reward, Reward):
        return reward
    if callable(reward):
        return FunctionReward(reward, name=getattr(reward, "__name__", name))
    raise ValueError(f"reward.name: {name!r} did not produce a callable reward")


def _is_plain_reward_fn(obj: Any) -> bool:
    """A function taking (samples, prompts) rather than a factory taking options."""
    import inspect

    try:
        params = [p for p in inspect.signature(obj).parameters.values() if p.default is inspect.Parameter.empty]
    except (TypeError, ValueError):
        return False
    return len(params) == 2


def as_reward_tensor(values: Tensor, batch: int) -> Tensor:
    """Check a reward's output: one finite-or-(-inf) float per row."""
    values = torch.as_tensor(values).reshape(-1).to(torch.float64)
    if values.numel() != batch:
        raise ValueError(f"reward returned {values.numel()} values for {batch} samples")
    if torch.isnan(values).any():
        raise ValueError("reward returned NaN")
    return values
