"""RBF (VP-SDE, tuned on tuning prompts) against Best-of-N (linear ODE) at 500 NFE, paired over prompts and seeds.

The counting study compares methods at one seed on 50 evaluation prompts: each accuracy has a standard error of
about 0.04, as large as the gap between the two best methods. This script runs both (and plain sampling with
each sampler) on the same evaluation prompts for several seeds and reports, besides each mean, the paired
difference RBF - BoN: per prompt, averaged over the seeds, then its mean and standard error over the prompts
(prompts are the independent unit; seeds of one prompt are not).

RBF's settings are the ones chosen without the evaluation prompts: the VP sampler by `benchmarks.sampler_sweep`
(uniform grid, g = 8) and the chains by `benchmarks.rbf_sweep` (8 chains, one starting noise each).

    .venv/bin/python -m benchmarks.rbf_vs_bon [--prompts 50] [--seeds 0 1 2] [--chains 8] [--norm 8]

Writes benchmarks/results/<name>.{json,md} (default rbf_vs_bon).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks.common import run_counting, save
from flowscale_ray.builtin import shapes
from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward


def per_prompt(model, reward, prompts, method_name, settings, spec, seed) -> dict[str, list[float]]:
    """Accuracy and reward of each prompt (in the order of `prompts`) for one seed."""
    results, acc = run_counting(model, spec, reward, None, method_name, settings, [(p, seed) for p in prompts])
    return {
        "accuracy": [float(a) for a in acc],
        "reward": [float(r.reward) for r in results],
        "nfe": [float(r.nfe) for r in results],
    }


def summary(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error over prompts of per-prompt values (already averaged over seeds)."""
    return values.mean().item(), (values.std() / len(values) ** 0.5).item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--chains", type=int, default=8, help="RBF n_chains (chosen by benchmarks.rbf_sweep)")
    ap.add_argument("--norm", type=float, default=8.0, help="VP diffusion norm (chosen by benchmarks.sampler_sweep)")
    ap.add_argument("--budget", type=int, default=500)
    ap.add_argument("--name", default="rbf_vs_bon", help="results file name")
    args = ap.parse_args()
    texts = list(shapes.evaluation_prompts())[: args.prompts]
    prompts = [Prompt(f"eval-{i:03d}", t) for i, t in enumerate(texts)]
    model, reward = build_model("shapes"), build_reward("counting")
    vp = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=args.norm, grid="uniform")
    ode = SamplerSpec(**SAMPLER_PRESETS["linear-ode"])
    vp_label = f"vp-sde (uniform, g={args.norm:g})"
    runs: list[tuple[str, str, str, dict[str, Any], SamplerSpec]] = [  # (key, method, sampler, settings, spec)
        ("base-ode", "base", "linear-ode", {}, ode),
        ("base-vp", "base", vp_label, {}, vp),
        ("bon", "bon", "linear-ode", {"n": args.budget // 10}, ode),
        ("rbf", "rbf", vp_label, {"n_chains": args.chains, "nfe_budget": args.budget}, vp),
        # The study's best single row (one seed): RBF with the linear SDE and the paper's 2 chains.
        (
            "rbf-sde",
            "rbf",
            "linear-sde",
            {"n_chains": 2, "nfe_budget": args.budget},
            SamplerSpec(**SAMPLER_PRESETS["linear-sde"]),
        ),
    ]
    data: dict[str, Any] = {"args": vars(args), "prompts": texts, "runs": []}
    means: dict[str, torch.Tensor] = {}
    md = [
        f"{len(prompts)} evaluation prompts x seeds {args.seeds}; per-prompt values averaged over the seeds, then "
        "mean ± standard error over the prompts.",
        "",
        "| method | sampler | settings | NFE | accuracy | reward (-RSS) |",
        "|---|---|---|---|---|---|",
    ]
    for key, name, label, settings, spec in runs:
        seeds = {s: per_prompt(model, reward, prompts, name, settings, spec, s) for s in args.seeds}
        data["runs"].append({"method": name, "sampler": label, "settings": settings, "per_seed": seeds})
        acc = torch.tensor([seeds[s]["accuracy"] for s in args.seeds], dtype=torch.float64).mean(0)
        rew = torch.tensor([seeds[s]["reward"] for s in args.seeds], dtype=torch.float64).mean(0)
        nfe = sum(sum(seeds[s]["nfe"]) for s in args.seeds) / (len(prompts) * len(args.seeds))
        means[key] = acc
        (am, ase), (rm, rse) = summary(acc), summary(rew)
        shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"
        md.append(f"| {name} | {label} | {shown} | {nfe:.0f} | {am:.3f} ± {ase:.3f} | {rm:.3f} ± {rse:.3f} |")
        print(md[-1], flush=True)
        save(args.name, data, "\n".join(md))
    diff = means["rbf"] - means["bon"]
    dm, dse = summary(diff)
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    base = means["base-ode"].mean().item()
    data["paired"] = {"rbf_minus_bon": dm, "se": dse, "prompts_rbf_better": wins, "prompts_bon_better": losses}
    md += [
        "",
        f"Paired accuracy difference RBF - BoN: {dm:+.3f} ± {dse:.3f} (RBF better on {wins} prompts, BoN on "
        f"{losses}, equal on {len(prompts) - wins - losses}). RBF / base (linear ODE) accuracy: "
        f"{means['rbf'].mean().item() / base:.1f}x.",
    ]
    save(args.name, data, "\n".join(md))


if __name__ == "__main__":
    main()
