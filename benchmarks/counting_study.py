"""The quantity-aware study on the built-in model (the paper's Table 1 and Table 4 layouts).

Given reward: the counting reward (-sum of squared count errors); accuracy: every count exact; held-out: the
CNN count predictor (never optimised). Prompts: the fixed evaluation set (`shapes.evaluation_prompts()`),
never used in training. Every configuration sees the same prompts and seeds.

    .venv/bin/python -m benchmarks.counting_study            # full study (long: tens of minutes on 2 cores)
    .venv/bin/python -m benchmarks.counting_study --prompts 4 --part table1   # a quick look

Writes benchmarks/results/counting_study.{json,csv,md} and counting_study.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from typing import Any

import torch

from benchmarks.common import RESULTS, machine, save
from flowscale_ray.builtin import counting, shapes
from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.search import METHODS

TABLE1: list[tuple[str, dict[str, Any], list[str]]] = [
    ("base", {}, ["linear-ode", "linear-sde", "vp-sde"]),
    ("bon", {"n": 50}, ["linear-ode", "vp-sde"]),
    ("sop", {"substeps": 11}, ["linear-ode"]),
    ("smc", {}, ["linear-ode", "linear-sde", "vp-sde"]),
    ("code", {}, ["linear-ode", "linear-sde", "vp-sde"]),
    ("svdd", {}, ["linear-ode", "linear-sde", "vp-sde"]),
    ("rbf", {}, ["linear-ode", "linear-sde", "vp-sde"]),
]
BUDGETS = [50, 100, 300, 500, 1000]


def run_config(model, reward, held, prompts, method_name, settings, preset, seed=0) -> dict[str, Any]:
    method = METHODS[method_name](METHODS[method_name].Config(**settings))
    spec = SamplerSpec(**SAMPLER_PRESETS[preset])
    ex = InProcessExecutor(ParticleEngine(model, spec), reward, held, in_flight=len(prompts))
    t0 = time.perf_counter()
    results = sorted(ex.run([SearchTask(p, method, seed) for p in prompts]), key=lambda r: r.prompt.id)
    secs = time.perf_counter() - t0
    images = torch.stack([r.image for r in results])
    acc = counting.accuracy(images, [r.prompt for r in results])
    rewards = torch.tensor([r.reward for r in results])
    held_out = torch.tensor([r.held_out for r in results])
    n = len(results)
    return {
        "method": method_name,
        "settings": settings,
        "sampler": preset,
        "prompts": n,
        "nfe": sum(r.nfe for r in results) / n,
        "reward": rewards.mean().item(),
        "reward_se": (rewards.std() / n**0.5).item(),
        "accuracy": acc.mean().item(),
        "accuracy_se": (acc.std() / n**0.5).item(),
        "held_out": held_out.mean().item(),
        "held_out_se": (held_out.std() / n**0.5).item(),
        "seconds": secs,
        "images": images,
    }


def plot(rows: list[dict[str, Any]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("bon", "o-"), ("rbf", "s-")):
        pts = sorted((r["nfe"], r) for r in rows if r["part"] == "scaling" and r["method"] == name)
        if pts:
            axes[0].plot([p[0] for p in pts], [p[1]["accuracy"] for p in pts], style, label=name.upper())
            axes[1].plot([p[0] for p in pts], [p[1]["reward"] for p in pts], style, label=name.upper())
    for ax, label in zip(axes, ("exact-count accuracy", "given reward (-RSS)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("NFE per prompt")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Built-in counting task: NFE scaling (BoN linear-ODE vs RBF VP-SDE)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=0, help="use the first N evaluation prompts (0: all)")
    ap.add_argument("--part", choices=["table1", "scaling", "all"], default="all")
    args = ap.parse_args()
    texts = list(shapes.evaluation_prompts())
    if args.prompts:
        texts = texts[: args.prompts]
    prompts = [Prompt(f"eval-{i:03d}", t) for i, t in enumerate(texts)]
    model = build_model("shapes")
    reward = build_reward("counting")
    held = build_reward("counting_heldout")
    rows: list[dict[str, Any]] = []
    sheets: dict[str, torch.Tensor] = {}
    configs = []
    if args.part in ("table1", "all"):
        configs += [("table1", m, s, p) for m, s, presets in TABLE1 for p in presets]
    if args.part in ("scaling", "all"):
        configs += [("scaling", "bon", {"n": b // 10}, "linear-ode") for b in BUDGETS]
        configs += [("scaling", "rbf", {"nfe_budget": b}, "vp-sde") for b in BUDGETS]
    for part, name, settings, preset in configs:
        row = run_config(model, reward, held, prompts, name, settings, preset)
        images = row.pop("images")
        if part == "table1" and (name, preset) in (("base", "linear-ode"), ("rbf", "vp-sde")):
            sheets[f"{name}-{preset}"] = images[:16]
        row["part"] = part
        rows.append(row)
        print(
            f"{part:<8} {name:<5} {preset:<10} NFE {row['nfe']:6.0f}  reward {row['reward']:7.3f}  "
            f"acc {row['accuracy']:.3f}  held-out {row['held_out']:7.3f}  ({row['seconds']:.0f}s)",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "counting_study.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "settings"] + ["settings"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "settings": json.dumps(r["settings"])})
    md = [f"Built-in counting task, {len(prompts)} evaluation prompts, seed 0; mean ± standard error.", ""]
    if any(r["part"] == "table1" for r in rows):
        md += ["| method | sampler | NFE | given reward (-RSS) | accuracy | held-out |", "|---|---|---|---|---|---|"]
        for r in rows:
            if r["part"] == "table1":
                md.append(
                    f"| {r['method']} | {r['sampler']} | {r['nfe']:.0f} | {r['reward']:.3f} ± {r['reward_se']:.3f} "
                    f"| {r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | {r['held_out']:.3f} ± {r['held_out_se']:.3f} |"
                )
    if any(r["part"] == "scaling" for r in rows):
        md += [
            "",
            "| NFE | BoN reward | BoN accuracy | BoN held-out | RBF reward | RBF accuracy | RBF held-out |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in BUDGETS:
            bon = next(
                (r for r in rows if r["part"] == "scaling" and r["method"] == "bon" and r["settings"]["n"] == b // 10),
                None,
            )
            rbf = next(
                (
                    r
                    for r in rows
                    if r["part"] == "scaling" and r["method"] == "rbf" and r["settings"]["nfe_budget"] == b
                ),
                None,
            )
            if bon and rbf:
                md.append(
                    f"| {b} | {bon['reward']:.3f} | {bon['accuracy']:.3f} | {bon['held_out']:.3f} | "
                    f"{rbf['reward']:.3f} | {rbf['accuracy']:.3f} | {rbf['held_out']:.3f} |"
                )
        plot(rows, RESULTS / "counting_study.png")
    if sheets:
        from flowscale_ray.images import contact_sheet, save_png

        for name, imgs in sheets.items():
            save_png(contact_sheet(list(imgs), columns=8), RESULTS / f"counting_{name}.png", scale=3)
    save("counting_study", {"machine": machine(), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
