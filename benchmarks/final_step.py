"""Which final step reproduces the data distribution? Per-mode variances of the analytic 2-D mixture.

The search methods stop at the last grid point with s > 0 and take one final step to s = 0: 'denoise' (jump to
the x0 estimate, what the reference code returns) or 'euler' (the sampler's own Euler / noise-free
Euler-Maruyama step). This measures both on the paper's sqrt grid and on a uniform grid.

    .venv/bin/python -m benchmarks.final_step
"""

from __future__ import annotations

import itertools

import torch

from benchmarks.common import save
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.models.gaussian_mixture import gmm2d
from tests.helpers import sample_with_engine

N = 2000


def main() -> None:
    model = gmm2d()
    rows = []
    finals: dict[tuple, torch.Tensor] = {}  # (sampler, steps, grid, final step) -> samples
    for (preset, sde, interp), steps, grid, final in itertools.product(
        [("linear-ode", False, "linear"), ("linear-sde", True, "linear"), ("vp-sde", True, "vp")],
        [10, 100],
        ["sqrt", "uniform"],
        ["denoise", "euler"],
    ):
        spec = SamplerSpec(interpolant=interp, sde=sde, steps=steps, grid=grid, final_step=final)
        x, _ = sample_with_engine(model, spec, N, prompt_id="final-step")
        finals[(preset, steps, grid, final)] = x
        comp = model.component_of(x)
        ratios = []
        for k in range(3):
            ratios += (x[comp == k].var(0) / model.variances[k]).tolist()
        worst = max(ratios, key=lambda r: abs(torch.log(torch.tensor(r)).item()))
        rows.append(
            {
                "sampler": preset,
                "steps": steps,
                "grid": grid,
                "final_step": final,
                "variance_ratios": ratios,
                "worst_ratio": worst,
                "mean_ratio": sum(ratios) / len(ratios),
            }
        )
    md = [
        f"Per-mode variance / true variance on gmm2d ({N} samples each; 1.00 is exact).",
        "",
        "| sampler | steps | grid | final step | mean ratio | worst ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['sampler']} | {r['steps']} | {r['grid']} | {r['final_step']} | "
            f"{r['mean_ratio']:.2f} | {r['worst_ratio']:.2f} |"
        )
    # Same noise keys: both final steps start from the same states at s_{M-1}, so the distance between a
    # sample's two versions is what the choice of final step changes.
    gaps = []
    for (preset, steps, grid, final), x in finals.items():
        if final == "denoise":
            d = (x - finals[(preset, steps, grid, "euler")]).norm(dim=1)
            gaps.append(
                {"sampler": preset, "steps": steps, "grid": grid, "mean": d.mean().item(), "max": d.max().item()}
            )
    md += [
        "",
        "Distance between the two final steps from the same state at s_{M-1} (same noise keys), mixture units:",
        "",
        "| sampler | steps | grid | mean distance | max distance |",
        "|---|---|---|---|---|",
    ]
    md += [f"| {g['sampler']} | {g['steps']} | {g['grid']} | {g['mean']:.4f} | {g['max']:.4f} |" for g in gaps]
    save("final_step", {"samples": N, "rows": rows, "distances": gaps}, "\n".join(md))


if __name__ == "__main__":
    main()
