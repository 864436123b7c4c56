"""Gradient guidance (DPS) on the built-in model, alone and inside particle search (the paper's Table 2 layout).

Given reward: the density-map counter (`counting_heldout`, mode log_prob: the log-probability that every named
class has exactly its count), which is differentiable. Held out: the pixel counter (`counting`: -RSS of the
counts found, and exact-count accuracy), which search never sees. Sampler: the VP-SDE tuned for this model on
tuning prompts (uniform grid, g = 8 s^2, 10 steps; benchmarks.sampler_sweep). Searches use 2 chains (the paper's
N = 2); SVDD's children per step and RBF's budget come from the method's NFE budget (`with_budget`).

    # 1. tune the guidance scale with DPS alone on tuning prompts (no evaluation prompt is used)
    nice .venv/bin/python -m benchmarks.guidance_study tune [--prompts 24] [--scales 0.03 0.1 0.3 1 3]
    # 2. evaluate base, DPS, SVDD, SVDD+DPS, RBF, RBF+DPS at 100 and 500 NFE on evaluation prompts
    nice .venv/bin/python -m benchmarks.guidance_study eval --scale S [--prompts 16] [--budgets 100 500]

Charging (core.guidance): each reward gradient costs GUIDED_STEP_NFE = 3 NFE and is included in the NFE column;
"budget" is the NFE the method's own search was given. Paired differences (same prompt and seed) against the
unguided counterpart of each row, with their standard errors. Writes benchmarks/results/guidance_{tune,eval}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import mean_se, save
from benchmarks.sampler_sweep import tuning_prompts
from flowscale_ray.builtin import counting, shapes
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.core.guidance import GuidanceSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.search import METHODS
from flowscale_ray.search.protocol import GUIDED_STEP_NFE, SearchContext

GIVEN = ("counting_heldout", {"mode": "log_prob"})
HELD = ("counting", {})
CHAINS = 2


def sampler(scale: float | None, steps: Any = None) -> SamplerSpec:
    guidance = GuidanceSpec(scale=scale, steps=steps) if scale else None
    return SamplerSpec(interpolant="vp", sde=True, diffusion_norm=8.0, grid="uniform", guidance=guidance)


def method_for(name: str, budget: int | None, spec: SamplerSpec):
    ctx = SearchContext(grid=spec.grid_times())
    if name == "base":
        return METHODS["base"](METHODS["base"].Config())
    cls = METHODS[name]
    return cls(cls.Config(n_chains=CHAINS)).with_budget(budget, ctx)


def run(model, given, held, name: str, budget: int | None, spec: SamplerSpec, tasks) -> dict[str, Any]:
    method = method_for(name, budget, spec)
    engine = ParticleEngine(model, spec)
    ex = InProcessExecutor(engine, given, held, in_flight=min(len(tasks), 8))  # results do not depend on it
    cpu, wall = time.process_time(), time.perf_counter()
    results = sorted(ex.run([SearchTask(p, method, seed) for p, seed in tasks]), key=lambda r: (r.prompt.id, r.seed))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    images = torch.stack([r.image for r in results])
    acc = counting.accuracy(images, [r.prompt for r in results]).double()
    return {
        "method": name,
        "budget": budget,
        "settings": method.settings(),
        "scale": spec.guidance.scale if spec.guidance else 0.0,
        "given": [r.reward for r in results],
        "held_out": [r.held_out for r in results],
        "accuracy": acc.tolist(),
        "nfe": [r.nfe for r in results],
        "gradients": engine.gradients,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
    }


def fmt(values: list[float], digits: int = 2) -> str:
    m, se = mean_se(values, single=float("nan"))
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def paired(a: list[float], b: list[float], digits: int = 2) -> str:
    return fmt([x - y for x, y in zip(a, b, strict=True)], digits)


def tune(args: argparse.Namespace) -> None:
    model, given, held = build_model("shapes"), build_reward(*GIVEN), build_reward(*HELD)
    name = "guidance_tune" if args.method == "base" else f"guidance_tune_{args.method}{args.budget}"
    prompts = tuning_prompts(args.prompts)
    tasks = [(Prompt(f"tune-{i:03d}", t), 0) for i, t in enumerate(prompts)]
    budget = None if args.method == "base" else args.budget
    base = run(model, given, held, args.method, budget, sampler(None), tasks)
    rows = [base]
    what = "DPS alone (base sampling" if args.method == "base" else f"{args.method.upper()}+DPS ({budget} NFE search"
    md = [
        f"Guidance scale tuned with {what} + guidance on every step but the last) on "
        f"{len(tasks)} tuning prompts (evaluation prompts excluded), seed 0. Given: density-map counter "
        "(log-probability of the exact counts); held out: pixel counter (-RSS, accuracy). Differences are paired "
        f"against the same method without guidance ({args.method}, budget {budget}).",
        "",
        "| scale | given | Δ given | held-out -RSS | Δ held-out | accuracy | NFE (charged) | CPU s |",
        "|---|---|---|---|---|---|---|---|",
        f"| 0 (unguided) | {fmt(base['given'])} | – | {fmt(base['held_out'])} | – | {fmt(base['accuracy'])} | "
        f"{mean_se(base['nfe'])[0]:.0f} | {base['cpu_seconds']:.0f} |",
    ]
    for scale in args.scales:
        row = run(model, given, held, args.method, budget, sampler(scale), tasks)
        rows.append(row)
        md.append(
            f"| {scale:g} | {fmt(row['given'])} | {paired(row['given'], base['given'])} | {fmt(row['held_out'])} | "
            f"{paired(row['held_out'], base['held_out'])} | {fmt(row['accuracy'])} | {mean_se(row['nfe'])[0]:.0f} | "
            f"{row['cpu_seconds']:.0f} |"
        )
        print(md[-1], flush=True)
        save(name, {"args": vars(args), "prompts": prompts, "rows": rows}, "\n".join(md))
    best = max(rows[1:], key=lambda r: mean_se(r["given"])[0])
    md += ["", f"Chosen (highest mean given reward): scale {best['scale']:g}."]
    save(name, {"args": vars(args), "prompts": prompts, "rows": rows, "chosen": best["scale"]}, "\n".join(md))


def evaluate(args: argparse.Namespace) -> None:
    model, given, held = build_model("shapes"), build_reward(*GIVEN), build_reward(*HELD)
    texts = list(shapes.evaluation_prompts())[:: args.stride][: args.prompts]
    tasks = [(Prompt(f"eval-{i:03d}", t), seed) for seed in range(args.seeds) for i, t in enumerate(texts)]
    plain, dps = sampler(None), sampler(args.scale)
    in_search = sampler(args.search_scale if args.search_scale is not None else args.scale)
    configs = [("base", None)] + [(m, b) for b in args.budgets for m in ("svdd", "rbf")]
    rows: list[dict[str, Any]] = []
    md_rows: list[str] = []
    for name, budget in configs:
        # The largest budgets run on the first `prompts_large` prompts only (CPU time).
        large = (budget or 0) >= max(args.budgets)
        subset = [t for t in tasks if not large or int(t[0].id[5:]) < args.prompts_large]
        guided = dps if name == "base" else in_search
        pair = [run(model, given, held, name, budget, spec, subset) for spec in (plain, guided)]
        rows += pair
        plain_label = {"base": "base", "svdd": "SVDD", "rbf": "RBF"}[name]
        guided_label = "DPS" if name == "base" else f"{plain_label}+DPS"
        for row, shown in zip(pair, (plain_label, guided_label), strict=True):
            ref = pair[0]
            diff_given = paired(row["given"], ref["given"]) if row is not ref else "–"
            diff_held = paired(row["held_out"], ref["held_out"]) if row is not ref else "–"
            nfe, grads = mean_se(row["nfe"])[0], row["gradients"] / len(subset)
            md_rows.append(
                f"| {shown} | {budget or '–'} | {len(subset)} | {nfe:.0f} | {grads:.1f} | {fmt(row['given'])} | "
                f"{diff_given} | {fmt(row['held_out'])} | {diff_held} | "
                f"{fmt(row['accuracy'])} | {row['cpu_seconds']:.0f} |"
            )
            print(md_rows[-1], flush=True)
        md = [
            f"Gradient guidance on the built-in model: {len(texts)} evaluation prompts (one in {args.stride} of the "
            f"fixed set; the {max(args.budgets)}-NFE rows on the first {args.prompts_large}) x {args.seeds} seed(s); "
            "VP-SDE (uniform grid, g = 8 s^2, 10 steps); guidance scale "
            f"{args.scale:g} for DPS (tuned with DPS alone on tuning prompts, guidance_tune.md) and "
            f"{in_search.guidance.scale:g} inside SVDD and RBF, every step but the last. "  # type: ignore[union-attr]
            f"Given reward: density-map counter (log-probability of the exact counts); held out: pixel counter "
            f"(-RSS and exact-count accuracy). Searches: {CHAINS} chains. NFE = the method's velocity evaluations plus "
            f"{GUIDED_STEP_NFE} per reward gradient; Δ = paired difference against the same row without guidance "
            "(mean ± standard error over prompts).",
            "",
            "| method | budget | prompts | NFE (charged) | gradients / prompt | given | Δ given | held-out -RSS "
            "| Δ held-out | accuracy | CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *md_rows,
        ]
        save(args.name, {"args": vars(args), "prompts": texts, "rows": rows}, "\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="guidance scale with DPS alone on tuning prompts")
    t.add_argument("--prompts", type=int, default=24)
    t.add_argument("--scales", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0, 3.0])
    t.add_argument("--method", choices=["base", "svdd", "rbf"], default="base", help="base: DPS alone")
    t.add_argument("--budget", type=int, default=100, help="NFE budget of svdd/rbf")
    e = sub.add_parser("eval", help="the Table 2 rows on evaluation prompts")
    e.add_argument("--scale", type=float, required=True, help="the scale chosen by `tune` (DPS alone)")
    e.add_argument("--search-scale", type=float, default=None, help="scale of SVDD+DPS / RBF+DPS (default --scale)")
    e.add_argument("--prompts", type=int, default=24)
    e.add_argument("--prompts-large", type=int, default=10, help="prompts for the largest budget's rows")
    e.add_argument("--stride", type=int, default=4, help="take every stride-th evaluation prompt")
    e.add_argument("--seeds", type=int, default=1)
    e.add_argument("--budgets", type=int, nargs="+", default=[100, 500])
    e.add_argument("--name", default="guidance_eval", help="results file name")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread spends the least CPU time per NFE
    tune(args) if args.command == "tune" else evaluate(args)


if __name__ == "__main__":
    main()
