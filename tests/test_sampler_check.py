"""The sampler's Gaussian check (core.dynamics.gaussian_overshoot): a closed form for data x0 ~ N(0, v I), checked
against a Monte Carlo run of the real step; quiet for the presets; a warning in `flowscale validate` and in the
run's log when the SDE's noise makes the states overshoot far past the marginals (the built-in model's samples
saturate there)."""

from __future__ import annotations

import pytest
import torch

from flowscale_ray.core.dynamics import OVERSHOOT_WARNING, SAMPLER_PRESETS, Dynamics, SamplerSpec, gaussian_overshoot
from flowscale_ray.core.interpolants import get_interpolant

EDGE = {"interpolant": "vp", "sde": True, "diffusion_norm": 12.0, "grid": "uniform", "steps": 10}


def monte_carlo(spec: SamplerSpec, v: float = 0.25, n: int = 40000) -> tuple[float, float]:
    dyn = Dynamics(spec, get_interpolant(spec.interpolant))
    path, grid = dyn.target, spec.grid_times()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, dtype=torch.float64, generator=gen)
    worst = 1.0
    for k in range(len(grid) - 1):
        s = torch.full((n,), grid[k], dtype=torch.float64)
        s_next = torch.full((n,), grid[k + 1], dtype=torch.float64)
        a, sig = path.alpha(s), path.sigma(s)
        u = ((path.d_alpha(s) * a * v + path.d_sigma(s) * sig) / (a * a * v + sig * sig))[:, None] * x
        if k == len(grid) - 2:
            return worst, dyn.final(x, u, s).var().item()
        x = dyn.step(x, u, s, s_next, torch.randn(x.shape, dtype=x.dtype, generator=gen))
        want = float(path.alpha(s_next[:1]) ** 2 * v + path.sigma(s_next[:1]) ** 2)
        worst = max(worst, x.var().item() / want, want / x.var().item())
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "spec",
    [
        SamplerSpec(**SAMPLER_PRESETS["linear-sde"]),
        SamplerSpec(**SAMPLER_PRESETS["vp-ode"]),
        SamplerSpec(interpolant="vp", sde=True, diffusion_norm=8.0, grid="uniform"),
        SamplerSpec(**EDGE),
    ],
    ids=["linear-sde", "vp-ode", "vp-g8", "vp-g12"],
)
def test_the_closed_form_matches_the_sampler_run_on_gaussian_data(spec):
    factor, step, final = gaussian_overshoot(spec)
    mc_factor, mc_final = monte_carlo(spec)
    # 40000 draws: a variance estimate is within about 3 x sqrt(2 / n) = 2% of the truth
    assert factor == pytest.approx(mc_factor, rel=0.03) and final == pytest.approx(mc_final, rel=0.03)
    assert 0 <= step < spec.steps


def test_presets_are_quiet_and_the_edge_warns():
    for preset in SAMPLER_PRESETS.values():
        assert gaussian_overshoot(SamplerSpec(**preset))[0] < 2.0
    assert gaussian_overshoot(SamplerSpec(**{**EDGE, "diffusion_norm": 10.0}))[0] < OVERSHOOT_WARNING
    assert gaussian_overshoot(SamplerSpec(**EDGE))[0] > OVERSHOOT_WARNING
    assert gaussian_overshoot(SamplerSpec(**{**EDGE, "steps": 50}))[0] < 10  # more steps: back in range


def _job(out, sampler: dict) -> dict:
    return {
        "name": "edge",
        "model": {"name": "gmm2d"},
        "sampler": sampler,
        "method": {"name": "bon", "n": 2},
        "reward": {"name": "mode_log_density", "options": {"mode": 2}},
        "prompts": ["a", "b"],
        "output": {"dir": str(out)},
    }


def test_validate_and_run_warn_past_the_edge(tmp_path):
    from flowscale_ray.config import load_job
    from flowscale_ray.run import run_job
    from flowscale_ray.run.validate import validate_job
    from tests.helpers import LogLines

    (ok,) = [x for x in validate_job(load_job(_job(tmp_path / "ok", {"preset": "vp-sde"}))) if "Gaussian" in x]
    assert "warning" not in ok and "within a factor 1.14" in ok
    job = load_job(_job(tmp_path / "edge", EDGE))
    (edge,) = [x for x in validate_job(job) if "Gaussian" in x]
    assert "factor 2.86e+03" in edge and "warning" in edge and "sampler.diffusion_norm" in edge
    with LogLines() as logs:
        run_job(job)
    assert any("warning: past 1000" in m for m in logs)
