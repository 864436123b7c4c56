"""Model registry: job files name a model and give its options.

The built-ins are a table of `"module:factory"` strings, imported only when that model is built, so this
module imports no model. Other packages add models through the entry-point group `flowscale_ray.models`
(see docs/plugins.md); code can also register one in-process with `@register_model("name")`, or a job file
can name any factory as `package.module:factory`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowscale_ray.models.base import FlowModel
from flowscale_ray.plugins import MODEL_GROUP, Registry, check_callable

ModelFactory = Callable[..., FlowModel]

BUILTIN_MODELS: dict[str, str] = {
    "gmm2d": "flowscale_ray.models.gaussian_mixture:gmm2d",
    "gmm_highdim": "flowscale_ray.models.gaussian_mixture:gmm_highdim",
    "gmm_rare": "flowscale_ray.models.gaussian_mixture:gmm_rare",
    "shapes": "flowscale_ray.builtin.model:load_shapes_model",
    "flux": "flowscale_ray.models.flux:load_flux",  # diffusers is imported only when one is built
    "sd3": "flowscale_ray.models.sd3:load_sd3",
}

MODELS: Registry[ModelFactory] = Registry("model", BUILTIN_MODELS, MODEL_GROUP, check=check_callable)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a model factory under `name` in this process (wins over a built-in of that name)."""

    def wrap(factory: ModelFactory) -> ModelFactory:
        return MODELS.register(name, factory)

    return wrap


def build_model(name: str, options: dict[str, Any] | None = None) -> FlowModel:
    """Build a registered, built-in or plugin model, or one given as 'package.module:factory'."""
    factory: ModelFactory
    if name in MODELS:
        factory = MODELS[name]
    elif ":" in name:
        from flowscale_ray.utils import import_object

        factory = import_object(name)
    else:
        raise ValueError(
            f"model.name: unknown model {name!r}; allowed: {', '.join(sorted(MODELS))} or 'module:factory'"
        )
    return factory(**(options or {}))
