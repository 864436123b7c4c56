"""The quantity-aware study on the built-in model (the paper's Table 1 and Table 4 layouts).

Given reward: the counting reward (-sum of squared count errors); accuracy: every count exact; held-out: the
CNN count predictor (never optimised). Prompts: the fixed evaluation set (`shapes.evaluation_prompts()`),
never used in training. Every configuration sees the same prompts and seeds.

    .venv/bin/python -m benchmarks.counting_study            # 50 prompts, both parts (about an hour on 2 cores)
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

from benchmarks.common import RESULTS, run_counting, save
from flowscale_ray.builtin import shapes
from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward

# The decisive rows first (base, RBF VP-SDE, BoN): results are saved after every configuration.
TABLE1: list[tuple[str, dict[str, Any], list[str]]] = [
    ("base", {}, ["linear-ode", "linear-sde", "vp-sde"]),
    ("rbf", {}, ["vp-sde"]),
    ("bon", {"n": 50}, ["linear-ode", "vp-sde"]),
    ("sop", {"substeps": 11}, ["linear-ode"]),
    ("smc", {}, ["linear-ode", "linear-sde", "vp-sde"]),
    ("code", {}, ["linear-ode", "linear-sde", "vp-sde"]),
    ("svdd", {}, ["linear-ode", "linear-sde", "vp-sde"]),
    ("rbf", {}, ["linear-ode", "linear-sde"]),
]
BUDGETS = [50, 100, 300, 500, 1000]


def run_config(model, reward, held, prompts, method_name, settings, preset, seed=0, spec=None) -> dict[str, Any]:
    """One Table 1 cell. `spec` overrides the preset's sampler (the tuned VP-SDE of counting_vp_tuned.py)."""
    spec = spec or SamplerSpec(**SAMPLER_PRESETS[preset])
    t0 = time.perf_counter()
    results, acc = run_counting(model, spec, reward, held, method_name, settings, [(p, seed) for p in prompts])
    secs = time.perf_counter() - t0
    images = torch.stack([r.image for r in results])
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
    ap.add_argument("--prompts", type=int, default=50, help="use the first N evaluation prompts (0: all 64)")
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
        configs += [("scaling", "rbf", {"nfe_budget": b}, "vp-sde") for b in BUDGETS]
        configs += [("scaling", "bon", {"n": b // 10}, "linear-ode") for b in BUDGETS]
    for part, name, settings, preset in configs:
        reuse = _same_as_table1(rows, name, settings, preset) if part == "scaling" else None
        if reuse is not None:
            row = {**reuse, "part": "scaling"}
        else:
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
        write_outputs(rows, prompts, sheets)


def _same_as_table1(rows: list[dict[str, Any]], name: str, settings: dict[str, Any], preset: str) -> dict | None:
    """A scaling point that Table 1 already measured (BoN n=50 L.O., RBF 500 NFE V.S.)."""
    defaults = {"bon": {"n": 50}, "rbf": {"nfe_budget": 500}}
    if settings != defaults.get(name):
        return None
    for r in rows:
        if r["part"] == "table1" and r["method"] == name and r["sampler"] == preset:
            return r
    return None


def write_outputs(rows: list[dict[str, Any]], prompts: list[Prompt], sheets: dict[str, torch.Tensor]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "counting_study.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "settings"] + ["settings"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "settings": json.dumps(r["settings"])})
    md = [f"Built-in counting task, {len(prompts)} evaluation prompts, seed 0; mean ± standard error.", ""]
    if any(r["part"] == "table1" for r in rows):
        md += ["| method | sampler | NFE | given reward (-RSS) | accuracy | held-out |", "|---|---|---|---|---|---|"]
        order = {(m, p): i for i, (m, _, ps) in enumerate(TABLE1) for p in ps}
        for r in sorted(
            (r for r in rows if r["part"] == "table1"),
            key=lambda r: (r["method"] != "base", order.get((r["method"], r["sampler"]), 0), r["sampler"]),
        ):
            md.append(
                f"| {r['method']} | {r['sampler']} | {r['nfe']:.0f} | {r['reward']:.3f} ± {r['reward_se']:.3f} "
                f"| {r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | {r['held_out']:.3f} ± {r['held_out_se']:.3f} |"
            )
    scaling = [r for r in rows if r["part"] == "scaling"]
    if scaling:
        md += [
            "",
            "| NFE | BoN reward | BoN accuracy | BoN held-out | RBF reward | RBF accuracy | RBF held-out |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in BUDGETS:
            bon = next((r for r in scaling if r["method"] == "bon" and r["settings"].get("n") == b // 10), None)
            rbf = next((r for r in scaling if r["method"] == "rbf" and r["settings"].get("nfe_budget") == b), None)
            cell = lambda r, k: f"{r[k]:.3f}" if r else "-"  # noqa: E731
            md.append(
                f"| {b} | {cell(bon, 'reward')} | {cell(bon, 'accuracy')} | {cell(bon, 'held_out')} | "
                f"{cell(rbf, 'reward')} | {cell(rbf, 'accuracy')} | {cell(rbf, 'held_out')} |"
            )
        plot(rows, RESULTS / "counting_study.png")
    if sheets:
        from flowscale_ray.images import contact_sheet, save_png

        for name, imgs in sheets.items():
            save_png(contact_sheet(list(imgs), columns=8), RESULTS / f"counting_{name}.png", scale=3)
    save("counting_study", {"prompts": len(prompts), "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
