"""One budget for the dataset against a fixed budget per prompt, on the built-in counting task.

Every run goes through the real run loop (`flowscale_ray.run.run_job`: the job file's `budget:` section, the
in-process executor, Parquet rows) with the method and sampler chosen earlier on tuning prompts only: RBF with 8
chains and the VP-SDE on a uniform grid with g = 8 (`benchmarks.sampler_sweep`, `benchmarks.rbf_sweep`). A
prompt is solved when every count is exact (reward = -RSS >= 0), which is what accuracy measures.

    python -m benchmarks.dataset_budget tune    # 24 tuning prompts x 2 seeds: the rounds' sizes at a mean of 100
    python -m benchmarks.dataset_budget eval    # 50 evaluation prompts x seeds 0 1 2 (the settings picked by tune)
    python -m benchmarks.dataset_budget plot    # accuracy against mean NFE per prompt, from the saved results

Per-prompt values are averaged over the seeds, then mean ± standard error over the prompts; differences are
paired by prompt. Results: benchmarks/results/dataset_budget_{tune,eval}.{json,md} and dataset_budget.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import torch

from benchmarks.common import RESULTS, save
from benchmarks.sampler_sweep import tuning_prompts
from flowscale_ray.builtin import shapes
from flowscale_ray.config import load_job
from flowscale_ray.run import run_job

SAMPLER = {"interpolant": "vp", "sde": True, "diffusion_norm": 8.0, "grid": "uniform", "steps": 10}
CHAINS = 8


def run(
    prompts: list[tuple[str, str]], seed: int, nfe: int, budget: dict[str, Any] | None, block: int, out: Path
) -> dict[str, list[float]]:
    """One run of RBF over `prompts` ((id, text) pairs); per prompt (in the given order): reward, accuracy, NFE
    actually spent, rounds."""
    name = f"s{seed}-n{nfe}-per-prompt"
    if budget is not None:
        name = f"s{seed}-dataset-" + "-".join(
            f"{budget[k]:g}" for k in ("mean_nfe", "base_nfe", "round_nfe", "max_rounds")
        )
    doc = {
        "name": name,
        "seed": seed,
        "model": {"name": "shapes"},
        "sampler": SAMPLER,
        # Under a dataset budget the rounds' sizes come from `budget` (RBF keeps as many of its chains as a round
        # pays a candidate per interval for); the method's own budget must only be valid.
        "method": {"name": "rbf", "n_chains": CHAINS, "nfe_budget": nfe if budget is None else 500},
        "reward": {"name": "counting"},
        "prompts": [{"id": pid, "prompt": text} for pid, text in prompts],
        "executor": {"in_flight": block},
        "output": {"dir": str(out), "shard_size": block, "save_images": False},
        "metrics": {"progress": "off"},
    }
    if budget is not None:
        doc["budget"] = {"mode": "dataset", "target_reward": 0.0, **budget}
    run_job(load_job(json.loads(json.dumps(doc))))
    rows = {r["prompt_id"]: r for r in ds.dataset(str(out / name / "data"), format="parquet").to_table().to_pylist()}
    got = [rows[pid] for pid, _ in prompts]
    return {
        "reward": [r["reward"] for r in got],
        "accuracy": [float(r["reward"] >= 0) for r in got],
        "nfe": [float(r["nfe"]) for r in got],
        "rounds": [float(r["rounds"]) for r in got],
    }


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), (values.std() / len(values) ** 0.5).item()


def per_prompt_mean(runs: dict[int, dict[str, list[float]]], key: str) -> torch.Tensor:
    return torch.tensor([runs[s][key] for s in sorted(runs)], dtype=torch.float64).mean(0)


def study(
    name: str,
    prompts: list[tuple[str, str]],
    seeds: list[int],
    per_prompt: list[int],
    dataset: list[tuple[float, int, int, int]],
    block: int,
    baseline: str,
) -> None:
    """Run every setting for every seed and save a table (with paired differences against `baseline`)."""
    out = Path(tempfile.mkdtemp(prefix="dataset-budget-"))
    settings: list[tuple[str, int, dict[str, Any] | None]] = [(f"per-prompt {n}", n, None) for n in per_prompt]
    for m, b, r, k in dataset:
        settings.append(
            (
                f"dataset {m:g} ({b}+{r}, <={k} rounds)",
                b,
                {"mean_nfe": m, "base_nfe": b, "round_nfe": r, "max_rounds": k},
            )
        )
    data: dict[str, Any] = {"prompts": [t for _, t in prompts], "seeds": seeds, "block": block, "runs": {}}
    saved = RESULTS / f"{name}.json"
    if saved.exists():  # settings already measured on the same prompts and seeds are kept, not rerun
        old = json.loads(saved.read_text())
        if old.get("prompts") == data["prompts"] and old.get("seeds") == seeds and old.get("block") == block:
            data["runs"] = old["runs"]
    try:
        for label, nfe, budget in settings:
            if label in data["runs"]:
                print(f"{label}: kept from {saved.name}", flush=True)
                continue
            started = time.perf_counter()
            runs = {s: run(prompts, s, nfe, budget, block, out) for s in seeds}
            data["runs"][label] = {"budget": budget, "nfe": nfe, "per_seed": runs}
            print(f"{label}: {time.perf_counter() - started:.0f} s", flush=True)
            save(name, data, table(data, baseline))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def table(data: dict[str, Any], baseline: str) -> str:
    n, seeds = len(data["prompts"]), data["seeds"]
    md = [
        f"RBF ({CHAINS} chains, VP-SDE uniform g=8), {n} prompts x seeds {seeds}, blocks of {data['block']} prompts. "
        "Per-prompt values averaged over the seeds, then mean ± standard error over the prompts; the paired "
        f"difference is against `{baseline}`.",
        "",
        "| allocation | mean NFE spent | accuracy | reward (-RSS) | mean rounds | accuracy − baseline (paired) |",
        "|---|---|---|---|---|---|",
    ]
    runs = data["runs"]
    base = per_prompt_mean(runs[baseline]["per_seed"], "accuracy") if baseline in runs else None
    for label, entry in runs.items():
        per_seed = {int(s): v for s, v in entry["per_seed"].items()}
        acc, rew = per_prompt_mean(per_seed, "accuracy"), per_prompt_mean(per_seed, "reward")
        nfe, rounds = per_prompt_mean(per_seed, "nfe").mean().item(), per_prompt_mean(per_seed, "rounds").mean().item()
        (am, ase), (rm, rse) = mean_se(acc), mean_se(rew)
        diff = "-"
        if base is not None and label != baseline:
            d = acc - base
            dm, dse = mean_se(d)
            diff = f"{dm:+.3f} ± {dse:.3f} (better on {int((d > 0).sum())}, worse on {int((d < 0).sum())})"
        md.append(f"| {label} | {nfe:.0f} | {am:.3f} ± {ase:.3f} | {rm:.3f} ± {rse:.3f} | {rounds:.2f} | {diff} |")
    # Each dataset row against the per-prompt rows at its mean and at twice its mean, paired by prompt.
    per_prompt = {e["nfe"]: lbl for lbl, e in runs.items() if e["budget"] is None}
    pairs = []
    for label, entry in runs.items():
        if entry["budget"] is None:
            continue
        mean = entry["budget"]["mean_nfe"]
        for factor in (1, 2):
            other = per_prompt.get(int(mean * factor))
            if other is None:
                continue
            mine = {int(s): v for s, v in entry["per_seed"].items()}
            theirs = {int(s): v for s, v in runs[other]["per_seed"].items()}
            d = per_prompt_mean(mine, "accuracy") - per_prompt_mean(theirs, "accuracy")
            dm, dse = mean_se(d)
            z = dm / dse if dse > 0 else float("inf") if dm > 0 else 0.0
            pairs.append(
                f"| {label} | {other} | {dm:+.3f} ± {dse:.3f} | {z:.1f} | {int((d > 0).sum())} / {int((d < 0).sum())} |"
            )
    if pairs:
        md += [
            "",
            "| dataset budget | per prompt | accuracy difference (paired) | in SE | prompts better / worse |",
            "|---|---|---|---|---|",
            *pairs,
        ]
    return "\n".join(md)


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads((RESULTS / "dataset_budget_eval.json").read_text())
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    families: dict[str, list[tuple[float, float, float]]] = {}
    for entry in data["runs"].values():
        per_seed = {int(s): v for s, v in entry["per_seed"].items()}
        acc = per_prompt_mean(per_seed, "accuracy")
        budget = entry["budget"]
        if budget is None:
            family, nominal = "per-prompt budget", entry["nfe"]
        else:
            half = budget["base_nfe"] * 2 == budget["mean_nfe"]
            family = "dataset budget, rounds of " + ("half the mean" if half else f"{budget['base_nfe']} NFE")
            nominal = budget["mean_nfe"]
        families.setdefault(family, []).append((nominal, *mean_se(acc)))
    for i, (family, points) in enumerate(sorted(families.items(), key=lambda kv: kv[0] != "per-prompt budget")):
        points.sort()
        xs, ms, ses = zip(*points, strict=True)
        ax.errorbar(xs, ms, yerr=ses, fmt="o-" if i == 0 else "s-", capsize=3, label=family)
    ax.set_xscale("log")
    ticks = sorted({p[0] for points in families.values() for p in points})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("mean NFE per prompt (budget)")
    ax.set_ylabel("accuracy (exact counts)")
    ax.set_title("RBF on the built-in counting task, 50 evaluation prompts x 3 seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "dataset_budget.png", dpi=120)
    print(f"saved {RESULTS / 'dataset_budget.png'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["tune", "eval", "plot"])
    ap.add_argument("--prompts", type=int, default=None, help="default: 24 tuning or 50 evaluation prompts")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 (tune) or 0 1 2 (eval)")
    ap.add_argument("--block", type=int, default=25, help="prompts per block (output shard)")
    ap.add_argument(
        "--dataset", nargs="+", default=None, help="MEAN:BASE:ROUND[:MAX_ROUNDS] settings of the dataset budget"
    )  # fmt: skip
    ap.add_argument("--per-prompt", type=int, nargs="+", default=None, help="per-prompt NFE budgets")
    ap.add_argument("--baseline", default=None, help="the row differences are paired against")
    ap.add_argument("--name", default=None, help="results file name (default dataset_budget_<stage>)")
    ap.add_argument("--first-prompt", type=int, default=0, help="skip this many prompts of the set")
    args = ap.parse_args()
    if args.stage == "plot":
        plot()
        return
    if args.stage == "tune":
        texts = tuning_prompts(args.first_prompt + (args.prompts or 24))[args.first_prompt :]
        prompts = [(f"tune-{i + args.first_prompt:03d}", t) for i, t in enumerate(texts)]
        seeds = args.seeds or [0, 1]
        dataset = args.dataset or [
            "100:10:10:8",
            "100:10:10:32",
            "100:20:20:16",
            "100:25:25:16",
            "100:50:25:16",
            "100:50:50:8",
            "100:30:10:32",
        ]
        per_prompt = args.per_prompt or [100]
    else:
        texts = list(shapes.evaluation_prompts())[: args.prompts or 50]
        prompts = [(f"eval-{i:03d}", t) for i, t in enumerate(texts)]
        seeds = args.seeds or [0, 1, 2]
        dataset = args.dataset or []
        per_prompt = args.per_prompt or [100, 500]
    parsed = []
    for d in dataset:
        m, b, r, *k = d.split(":")
        parsed.append((float(m), int(b), int(r), int(k[0]) if k else 8))
    baseline = args.baseline or f"per-prompt {per_prompt[0]}"
    study(args.name or f"dataset_budget_{args.stage}", prompts, seeds, per_prompt, parsed, args.block, baseline)


if __name__ == "__main__":
    main()
