"""Model registry: job files name a model and give its options; users can register their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowscale_ray.models.base import FlowModel

ModelFactory = Callable[..., FlowModel]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def wrap(factory: ModelFactory) -> ModelFactory:
        MODELS[name] = factory
        return factory

    return wrap


def build_model(name: str, options: dict[str, Any] | None = None) -> FlowModel:
    """Build a registered model, or one given as 'package.module:factory'."""
    _load_builtin_models()
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


def _load_builtin_models() -> None:
    # Importing registers them.
    from flowscale_ray.builtin import model  # noqa: F401
    from flowscale_ray.models import flux, gaussian_mixture, sd3  # noqa: F401  (diffusers loads lazily)
