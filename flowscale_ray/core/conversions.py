"""Velocity -> x0 / score for any interpolant, and the velocity transform between interpolants.

For x = alpha x0 + sigma x1 and u = d_alpha x0 + d_sigma x1 (spec 1.2):
    x0_hat = (sigma u - d_sigma x) / (d_alpha sigma - d_sigma alpha)
    score  = -x1_hat / sigma = (alpha u - d_alpha x) / ((d_alpha sigma - alpha d_sigma) sigma)

Interpolant conversion (spec 1.4): a model trained on a `source` path (linear for FLUX/SD3) is queried
on a `target` path (VP) at target time s through the source time t_s with the same SNR and the scale
c_s = sigma_target(s) / sigma_source(t_s), so that x_target(s) = c_s x_source(t_s):
    u_target(x, s) = (dc/ds / c) x + c (dt/ds) u_source(x / c, t_s)
One network call per velocity.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from flowscale_ray.core.interpolants import Interpolant


def _bcast(coef: Tensor, x: Tensor) -> Tensor:
    """A per-row coefficient [B] reshaped to broadcast over x [B, ...], in x's dtype."""
    return coef.to(x.dtype).reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def velocity_to_x0(interp: Interpolant, x: Tensor, u: Tensor, t: Tensor) -> Tensor:
    """Posterior mean of x0 (Tweedie) from the velocity u at (x, t)."""
    a, s, da, ds = interp.alpha(t), interp.sigma(t), interp.d_alpha(t), interp.d_sigma(t)
    den = da * s - ds * a
    return _bcast(s / den, x) * u - _bcast(ds / den, x) * x


def velocity_to_x1(interp: Interpolant, x: Tensor, u: Tensor, t: Tensor) -> Tensor:
    """Posterior mean of the noise x1 from the velocity u at (x, t)."""
    a, s, da, ds = interp.alpha(t), interp.sigma(t), interp.d_alpha(t), interp.d_sigma(t)
    den = a * ds - da * s
    return _bcast(a / den, x) * u - _bcast(da / den, x) * x


def velocity_to_score(interp: Interpolant, x: Tensor, u: Tensor, t: Tensor) -> Tensor:
    """Score grad log p_t(x) = -x1_hat / sigma (paper Eq. 8)."""
    a, s, da, ds = interp.alpha(t), interp.sigma(t), interp.d_alpha(t), interp.d_sigma(t)
    den = (da * s - a * ds) * s
    return _bcast(a / den, x) * u - _bcast(da / den, x) * x


@dataclass(frozen=True)
class TimeConversion:
    """Where and how to query a source-path model for a target-path state at target time s."""

    source_time: Tensor  # t_s, [B] float64
    scale: Tensor  # c_s
    d_time: Tensor  # dt_s/ds
    d_scale: Tensor  # dc_s/ds


def time_conversion(source: Interpolant, target: Interpolant, s: Tensor) -> TimeConversion:
    """SNR-matched source time, scale and their derivatives for target time s (spec 1.4 steps 1-4)."""
    ab, sb, dab, dsb = target.alpha(s), target.sigma(s), target.d_alpha(s), target.d_sigma(s)
    t = source.time_from_snr(ab / sb)
    at, st, dat, dst = source.alpha(t), source.sigma(t), source.d_alpha(t), source.d_sigma(t)
    scale = sb / st
    d_time = st**2 * (sb * dab - ab * dsb) / (sb**2 * (st * dat - at * dst))
    d_scale = (st * dsb - sb * dst * d_time) / st**2
    return TimeConversion(source_time=t, scale=scale, d_time=d_time, d_scale=d_scale)


def convert_velocity(conv: TimeConversion, x_target: Tensor, u_source: Tensor) -> Tensor:
    """u_target = (c'/c) x + c t' u_source(x / c, t_s) (paper Eq. 11)."""
    return (
        _bcast(conv.d_scale / conv.scale, x_target) * x_target + _bcast(conv.scale * conv.d_time, x_target) * u_source
    )
