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

    def verifier_calls(self, values: Sequence[float]) -> int:
        """The verifier calls that scores `values` (one call of this reward) cost, as the compute accounting counts
        them: one per row. A reward that scores some rows with a costlier model than others says otherwise (a
        cascade counts its expensive stage's calls), and then also provides `charge(options)` (see `charge_for`)."""
        return len(values)


class FunctionReward(Reward):
    def __init__(self, fn: Callable[[Tensor, Sequence[Prompt]], Tensor], name: str) -> None:
        self.fn = fn
        self.name = name

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        return self.fn(samples, prompts)


__all__ = [
    "REWARDS",
    "FunctionReward",
    "Reward",
    "as_reward_tensor",
    "build_reward",
    "charge_for",
    "charged_calls",
    "register_reward",
]


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


def charged_calls(reward: Any, values: Sequence[float]) -> int:
    """The verifier calls one call of `reward` cost, given the scores it returned (Reward.verifier_calls; one per row
    for anything else)."""
    count = getattr(reward, "verifier_calls", None)
    return int(count(values)) if callable(count) else len(values)


def charge_for(name: str, options: dict[str, Any] | None = None) -> Callable[[Sequence[float]], int]:
    """What `charged_calls` gives for the reward `name` built with `options`, without building it (the Ray driver
    holds no reward): a reward class with a static `charge(options)` returns its counting function; any other
    reward costs one call per row. Importing the class loads no model."""
    try:
        obj: Any = REWARDS.get(name)
        if obj is None and ":" in name:
            from flowscale_ray.utils import import_object

            obj = import_object(name)
    except Exception:  # the reward itself reports this, with its field, where it is built
        obj = None
    charge = getattr(obj, "charge", None) if isinstance(obj, type) else None
    return charge(dict(options or {})) if callable(charge) else len


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
