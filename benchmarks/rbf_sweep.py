"""RBF's own settings for the built-in model at 500 NFE, tuned on prompts that are NOT in the evaluation set.

The counting study runs RBF with the paper's settings (2 chains, one starting noise per chain). The reference
code differs: it starts each chain from the best of 25 noises (spec: `seed_candidates`). This sweep measures,
on the tuning prompts of `benchmarks.sampler_sweep` (evaluation prompts excluded), RBF's exact-count accuracy
at 500 NFE with the VP-SDE sampler chosen there (uniform grid, g = 8) for several chain counts and seed
searches, next to Best-of-N (linear ODE, n = 50) on the same prompts and seeds, so that the study's RBF
setting is chosen without looking at the evaluation prompts.

    .venv/bin/python -m benchmarks.rbf_sweep [--prompts 24] [--seeds 2] [--budget 500] [--norm 8]
    .venv/bin/python -m benchmarks.rbf_sweep --settings 16:1 --no-bon --name rbf_sweep_more

Writes benchmarks/results/<name>.{json,md} (default rbf_sweep).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import save
from benchmarks.sampler_sweep import measure, tuning_prompts
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.models import build_model
from flowscale_ray.rewards import build_reward

SETTINGS = [(2, 1), (2, 25), (4, 1), (4, 25), (8, 1), (8, 25)]  # (n_chains, seed_candidates)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--norm", type=float, default=8.0, help="VP diffusion norm (chosen by benchmarks.sampler_sweep)")
    ap.add_argument("--grid", default="uniform")
    ap.add_argument(
        "--settings",
        nargs="+",
        default=[f"{c}:{k}" for c, k in SETTINGS],
        metavar="CHAINS:SEEDS",
        help="RBF n_chains:seed_candidates pairs to measure",
    )
    ap.add_argument("--no-bon", action="store_true", help="skip the Best-of-N reference row")
    ap.add_argument("--name", default="rbf_sweep", help="results file name")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, reward = build_model("shapes"), build_reward("counting")
    prompts = tuning_prompts(args.prompts)
    vp = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=args.norm, grid=args.grid)
    ode = SamplerSpec(interpolant="linear", sde=False)
    pairs = [tuple(int(v) for v in item.split(":")) for item in args.settings]
    runs: list[tuple[str, str, dict, SamplerSpec]] = (
        [] if args.no_bon else [("bon", "linear-ode", {"n": args.budget // 10}, ode)]
    )
    runs += [
        ("rbf", f"vp-sde ({args.grid}, g={args.norm:g})", {"n_chains": c, "seed_candidates": k}, vp) for c, k in pairs
    ]
    md = [
        f"Tuning prompts: {args.prompts} (evaluation prompts excluded) x {args.seeds} seeds, {args.budget} NFE; "
        "mean ± standard error.",
        "",
        "| method | sampler | settings | accuracy | reward (-RSS) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for name, label, settings, spec in runs:
        if name == "rbf":
            settings = {**settings, "nfe_budget": args.budget}
        row = measure(model, reward, prompts, spec, name, settings, args.seeds)
        rows.append({"method": name, "sampler": label, "settings": settings, **row})
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        md.append(
            f"| {name} | {label} | {shown} | {row['accuracy']:.3f} ± {row['accuracy_se']:.3f} | "
            f"{row['reward']:.2f} ± {row['reward_se']:.2f} | {row['seconds']:.0f} |"
        )
        print(md[-1], flush=True)
        save(args.name, {"args": vars(args), "prompts": prompts, "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
