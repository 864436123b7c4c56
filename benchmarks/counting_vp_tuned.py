"""The VP-SDE rows of the counting study again, with the VP sampler tuned on tuning prompts.

`benchmarks.sampler_sweep` (24 tuning prompts, none from the evaluation set) picks the VP-SDE settings for the
built-in model: a uniform grid (the paper's sqrt grid ends its search at linear-equivalent t = 0.71, and the
one-step x0 estimate from there is blurry for this model) and a larger diffusion norm. This script runs the
VP-SDE rows of Table 1 with those settings on the same 50 evaluation prompts and seed as
`benchmarks.counting_study`, so they compare directly with its rows (Best-of-N with the linear ODE at 500 NFE:
accuracy 0.90).

    .venv/bin/python -m benchmarks.counting_vp_tuned --norm 8 [--methods base rbf smc code svdd]
    .venv/bin/python -m benchmarks.counting_vp_tuned --norm 8 --rbf-chains 8 --methods rbf \
        --rbf-presets linear-sde linear-ode --name counting_rbf_tuned
    .venv/bin/python -m benchmarks.counting_vp_tuned --norm 8 --methods --budgets 50 100 300 1000 \
        --name counting_vp_tuned_scaling

Writes benchmarks/results/<name>.{json,md} (default counting_vp_tuned).
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import save
from benchmarks.counting_study import TABLE1, run_config
from flowscale_ray.builtin import shapes
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--norm", type=float, required=True, help="diffusion norm chosen on tuning prompts")
    ap.add_argument("--grid", default="uniform")
    ap.add_argument("--methods", nargs="*", default=["base", "rbf", "smc", "code", "svdd"])
    ap.add_argument("--budgets", type=int, nargs="*", default=[], help="RBF NFE budgets (Table 4 layout)")
    ap.add_argument(
        "--rbf-chains", type=int, default=None, help="RBF n_chains (chosen by benchmarks.rbf_sweep); default 2"
    )
    ap.add_argument(
        "--rbf-presets",
        nargs="*",
        default=[],
        help="also run RBF (500 NFE) with these study presets (linear-ode, linear-sde) for a like-for-like ordering",
    )
    ap.add_argument("--name", default="counting_vp_tuned", help="results file name")
    args = ap.parse_args()
    texts = list(shapes.evaluation_prompts())[: args.prompts]
    prompts = [Prompt(f"eval-{i:03d}", t) for i, t in enumerate(texts)]
    model, reward, held = build_model("shapes"), build_reward("counting"), build_reward("counting_heldout")
    spec = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=args.norm, grid=args.grid)
    settings = {m: s for m, s, _ in TABLE1}
    rows: list[dict[str, Any]] = []
    md = [
        f"VP-SDE tuned on tuning prompts ({args.grid} grid, g = {args.norm:g}·s²), {len(prompts)} evaluation "
        "prompts, seed 0; mean ± standard error. Compare with counting_study.md.",
        "",
        "| method | sampler | NFE | given reward (-RSS) | accuracy | held-out |",
        "|---|---|---|---|---|---|",
    ]

    def rbf(budget: int) -> dict[str, Any]:
        # At most the chains the budget allows: each chain needs one NFE per interval and one to start.
        chains = min(args.rbf_chains, budget // spec.steps) if args.rbf_chains else None
        return {"nfe_budget": budget, **({"n_chains": chains} if chains else {})}

    runs = [(name, rbf(500) if name == "rbf" else settings[name], "vp-sde") for name in args.methods]
    runs += [("rbf", rbf(b), "vp-sde") for b in args.budgets]
    runs += [("rbf", rbf(500), preset) for preset in args.rbf_presets]
    for name, method_settings, preset in runs:
        vp = preset == "vp-sde"
        row = run_config(model, reward, held, prompts, name, method_settings, preset, spec=spec if vp else None)
        row.pop("images")
        row["sampler_spec"] = spec.__dict__ if vp else preset
        rows.append(row)
        label = f"vp-sde ({args.grid}, g={args.norm:g})" if vp else preset
        chains = f", {method_settings['n_chains']} chains" if "n_chains" in method_settings else ""
        md.append(
            f"| {name}{chains} | {label} | {row['nfe']:.0f} | "
            f"{row['reward']:.3f} ± {row['reward_se']:.3f} | {row['accuracy']:.3f} ± {row['accuracy_se']:.3f} | "
            f"{row['held_out']:.3f} ± {row['held_out_se']:.3f} |"
        )
        print(md[-1], flush=True)
        save(args.name, {"args": vars(args), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
