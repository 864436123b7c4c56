"""The sampler's resolution shift for the diffusers models, read from their local configs (no weights)."""

from __future__ import annotations

from typing import Any

from flowscale_ray.models import flux, sd3


def sampler_shift(name: str, options: dict[str, Any]) -> float:
    """The `sampler.shift` that reproduces the diffusers pipeline's schedule for model `name` ('flux' or
    'sd3') with these options, read from the local folder's JSON configs (no weights are loaded)."""
    if name == "flux":
        return flux.grid_shift_from_configs(options)
    if name == "sd3":
        return sd3.grid_shift_from_configs(options)
    raise ValueError(f"model.name: sampler_shift knows 'flux' and 'sd3', got {name!r}")
