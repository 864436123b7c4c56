"""Sampling math: interpolants, conversions, diffusion schedules, time grids, steppers, noise.

Pure torch. Nothing in this package imports Ray, storage or metrics (a test enforces it).
Time convention everywhere: t=1 is noise, t=0 is data (the FLUX / rectified-flow convention).
"""

from flowscale_ray.core.conversions import (
    TimeConversion,
    convert_velocity,
    time_conversion,
    velocity_to_score,
    velocity_to_x0,
)
from flowscale_ray.core.diffusion import DIFFUSION_SCHEDULES, diffusion_coefficient
from flowscale_ray.core.dynamics import Dynamics, SamplerSpec
from flowscale_ray.core.interpolants import (
    INTERPOLANTS,
    Interpolant,
    LinearInterpolant,
    PolynomialInterpolant,
    VPInterpolant,
    get_interpolant,
)
from flowscale_ray.core.noise import derive_seed, standard_normal
from flowscale_ray.core.timegrid import TIME_GRIDS, time_grid

__all__ = [
    "DIFFUSION_SCHEDULES",
    "INTERPOLANTS",
    "TIME_GRIDS",
    "Dynamics",
    "Interpolant",
    "LinearInterpolant",
    "PolynomialInterpolant",
    "SamplerSpec",
    "TimeConversion",
    "VPInterpolant",
    "convert_velocity",
    "derive_seed",
    "diffusion_coefficient",
    "get_interpolant",
    "standard_normal",
    "time_conversion",
    "time_grid",
    "velocity_to_score",
    "velocity_to_x0",
]
