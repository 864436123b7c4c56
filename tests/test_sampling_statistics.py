"""Statistical tests: every sampler reproduces the Gaussian mixture's moments, per-mode moments and mode
weights.

Fixed seeds; tolerances are Z standard errors of the Monte-Carlo estimate, with the standard errors
estimated from the samples themselves (the mixture is not Gaussian, so no closed-form variance of the
covariance estimator is assumed). Per-mode checks (samples assigned to their most likely mode; the gmm2d
modes are far apart, so misassignment is negligible) catch within-mode variance errors that the global
covariance, dominated by the spread between modes, would hide.

The grid is uniform with 100 steps: the paper's sqrt grid ends at s = sqrt(2/M - 1/M^2) (0.14 for M=100),
which is a fine search schedule but not a converged sampler (benchmarks/final_step.py measures it).
"""

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.models.gaussian_mixture import gmm2d, gmm_highdim
from tests.helpers import sample_with_engine

N = 2000
Z = 4.5  # per check; ~7e-6 two-sided

U = {"steps": 100, "grid": "uniform"}
SAMPLERS = {
    "linear-ode": SamplerSpec(interpolant="linear", sde=False, **U),
    "linear-sde-g=t^2": SamplerSpec(interpolant="linear", diffusion_norm=1.0, final_step="euler", **U),
    "linear-sde-g=3t^2": SamplerSpec(interpolant="linear", diffusion_norm=3.0, **U),
    "linear-sde-g=0.5": SamplerSpec(
        interpolant="linear", diffusion="constant", diffusion_norm=0.5, final_step="euler", **U
    ),
    "vp-sde": SamplerSpec(interpolant="vp", **U),
    "vp-sde-euler-final": SamplerSpec(interpolant="vp", final_step="euler", **U),
    "vp-ode": SamplerSpec(interpolant="vp", sde=False, **U),
}


def _check_moments(x: torch.Tensor, model) -> None:
    n = x.shape[0]
    mean = x.mean(0)
    se_mean = x.std(0) / n**0.5
    assert ((mean - model.mixture_mean()).abs() <= Z * se_mean).all(), (mean, model.mixture_mean(), se_mean)
    centred = x - mean
    prods = centred[:, :, None] * centred[:, None, :]
    cov = prods.mean(0)
    se_cov = prods.std(0) / n**0.5
    err = (cov - model.mixture_covariance()).abs()
    assert (err <= Z * se_cov + 1e-12).all(), (cov, model.mixture_covariance(), se_cov)


def _check_per_mode(x: torch.Tensor, model) -> None:
    comp = model.component_of(x)
    for k in range(model.weights.numel()):
        xs = x[comp == k]
        n = xs.shape[0]
        mean_err = (xs.mean(0) - model.means[k]).abs()
        assert (mean_err <= Z * xs.std(0) / n**0.5).all(), (k, xs.mean(0), model.means[k])
        sq = (xs - xs.mean(0)) ** 2
        var_err = (xs.var(0) - model.variances[k]).abs()
        assert (var_err <= Z * sq.std(0) / n**0.5).all(), (k, xs.var(0), model.variances[k])


def _check_mode_weights(x: torch.Tensor, model) -> None:
    comp = model.component_of(x)
    freq = torch.bincount(comp, minlength=model.weights.numel()).double() / x.shape[0]
    se = (model.weights * (1 - model.weights) / x.shape[0]).sqrt()
    assert ((freq - model.weights).abs() <= Z * se).all(), (freq, model.weights)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_reproduces_gmm2d(name):
    model = gmm2d()
    x, eng = sample_with_engine(model, SAMPLERS[name], N, prompt_id=f"stat-{name}")
    assert eng.nfe == N * 100  # velocities at s_0 .. s_99; the last step reuses the last one
    _check_moments(x, model)
    _check_per_mode(x, model)
    _check_mode_weights(x, model)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear-ode", "vp-sde-euler-final"])
def test_sampler_reproduces_high_dimensional_mixture(name):
    model = gmm_highdim(dim=16, modes=3, seed=3)
    x, _ = sample_with_engine(model, SAMPLERS[name], N, prompt_id=f"stat-hd-{name}")
    n = x.shape[0]
    se_mean = x.std(0) / n**0.5
    assert ((x.mean(0) - model.mixture_mean()).abs() <= Z * se_mean).all()
    var_err = (x.var(0) - torch.diagonal(model.mixture_covariance())).abs()
    se_var = ((x - x.mean(0)) ** 2).std(0) / n**0.5
    assert (var_err <= Z * se_var).all()
    _check_mode_weights(x, model)


@pytest.mark.parametrize(
    "spec",
    [
        SamplerSpec(interpolant="linear", sde=False, steps=4, grid="uniform"),  # too coarse
        SamplerSpec(interpolant="vp", steps=100, grid="sqrt"),  # posterior mean at s=0.14: shrunk modes
    ],
    ids=["coarse-ode", "sqrt-grid-denoise"],
)
def test_the_checks_detect_a_wrong_sampler(spec):
    """Power: the same checks reject samplers known to be off."""
    model = gmm2d()
    x, _ = sample_with_engine(model, spec, N)
    with pytest.raises(AssertionError):
        _check_moments(x, model)
        _check_per_mode(x, model)
        _check_mode_weights(x, model)
