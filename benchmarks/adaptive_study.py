"""Adaptive budget forcing (`abf`) and Verifier-Threshold (`vt`) against RBF, SVDD and the rest on the rare-mode
mixture scenarios (docs/adaptive.md).

Scenarios: `gmm_rare` (eight modes on a circle of radius 4, a rare mode of weight 0.02 either at distance 7,
`far`, or at the centre), reward -||x - rare mode||^2, held-out the exact data log-density (so samples pushed
off the data manifold show), hit = the final sample's most likely component is the rare mode. Sampler: the
paper's (VP-SDE, g = 3 s^2, 10 steps, sqrt grid). A "prompt" is an independent search: prompt ids differ, so
the noise differs. Every method gets its budget through `with_budget` (bon, svdd, smc pay whole units, so
they may spend slightly less than the budget; the NFE column says what was spent).

    .venv/bin/python -m benchmarks.adaptive_study tune       # tuning seed only; mixture + counting tuning prompts
    .venv/bin/python -m benchmarks.adaptive_study mixture    # 200 evaluation searches per scenario, NFE 100 and 500
    .venv/bin/python -m benchmarks.adaptive_study polish     # vt with and without its local search at the end

`tune` uses seed 101 and prompt ids `tune-*` on the mixtures, and `benchmarks.sampler_sweep.tuning_prompts` (no
evaluation prompt) on the counting task; `mixture` uses seed 0 and prompt ids `eval-*`, never seen by `tune`.
Writes benchmarks/results/adaptive_tune.{json,md} and adaptive_mixture.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import mean_se, save
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.search import METHODS

TUNE_SEED, EVAL_SEED = 101, 0
SCENARIOS = ("far", "centre")
BUDGETS = (100, 500)

# (label, method, settings); every method is then sized by with_budget(nfe)
TUNE_GRID: list[tuple[str, str, dict[str, Any]]] = [
    ("svdd (paper)", "svdd", {}),
    ("rbf (paper)", "rbf", {}),
    ("abf as rbf", "abf", {"n_chains": 2, "explore": 0.0, "rollover": "next", "chain_nfe": 0}),
    ("abf chains only", "abf", {"n_chains": 4, "explore": 0.0, "rollover": "next", "chain_nfe": 200}),
    ("abf explore 0.5, 2 chains", "abf", {"n_chains": 2, "explore": 0.5, "rollover": "spread", "chain_nfe": 0}),
    ("abf explore 0.5", "abf", {"n_chains": 4, "explore": 0.5, "rollover": "spread", "chain_nfe": 200}),
    ("abf explore 0.5, next", "abf", {"n_chains": 4, "explore": 0.5, "rollover": "next", "chain_nfe": 200}),
    ("abf explore 0.5, margin 0.5", "abf", {"n_chains": 4, "explore": 0.5, "margin": 0.5, "chain_nfe": 200}),
    ("abf explore 1", "abf", {"n_chains": 4, "explore": 1.0, "chain_nfe": 200}),
    ("vt calibrate 0.25", "vt", {"n_chains": 4, "calibrate": 0.25, "chain_nfe": 200}),
    ("vt calibrate 0.5", "vt", {"n_chains": 4, "calibrate": 0.5, "chain_nfe": 200}),
]

EVAL_METHODS = ["base", "bon", "svdd", "smc", "rbf", "abf", "vt"]


def scenario(rare: str):
    model = build_model("gmm_rare", {"rare": rare})
    options = {"model": "gmm_rare", "model_options": {"rare": rare}}
    return model, build_reward("negative_squared_distance", options), build_reward("data_log_density", options)


def sized(name: str, settings: dict[str, Any], nfe: int, ctx) -> Any:
    method = METHODS[name](METHODS[name].Config(**settings))
    return method if name == "base" else method.with_budget(nfe, ctx)


def run_mixture(rare: str, name: str, settings: dict[str, Any], nfe: int, prompts: int, seed: int, tag: str) -> dict:
    model, reward, held = scenario(rare)
    spec = SamplerSpec()
    ex = InProcessExecutor(ParticleEngine(model, spec), reward, held, in_flight=prompts)
    method = sized(name, settings, nfe, ex.context)
    t0 = time.perf_counter()
    tasks = [SearchTask(Prompt(f"{tag}-{i:03d}", ""), method, seed) for i in range(prompts)]
    res = sorted(ex.run(tasks), key=lambda r: r.prompt.id)
    seconds = time.perf_counter() - t0
    samples = torch.stack([r.sample for r in res]).to(torch.float64)
    return {
        "scenario": rare,
        "method": name,
        "settings": method.settings(),
        "budget": nfe,
        "nfe": sum(r.nfe for r in res) / len(res),
        "verifier_calls": sum(r.verifier_calls for r in res) / len(res),
        "reward": [r.reward for r in res],
        "held_out": [r.held_out for r in res],
        "hit": (model.component_of(samples) == model.rare_index).double().tolist(),  # type: ignore[attr-defined]
        "seconds": seconds,
    }


def summary(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in ("reward", "held_out", "hit")}
    for key in ("reward", "held_out", "hit"):
        out[key], out[f"{key}_se"] = mean_se(row[key])
    return out


def paired(a: dict, b: dict, key: str = "reward") -> tuple[float, float]:
    return mean_se([x - y for x, y in zip(a[key], b[key], strict=True)])


def tune(args) -> None:
    rows: list[dict] = []
    for rare in SCENARIOS:
        for nfe in BUDGETS:
            ref = None
            for label, name, settings in TUNE_GRID:
                row = run_mixture(rare, name, settings, nfe, args.prompts, TUNE_SEED, "tune")
                row["label"] = label
                ref = ref or (row if name == "svdd" else None)
                s = summary(row)
                if ref is not None and name != "svdd":
                    s["vs_svdd"], s["vs_svdd_se"] = paired(row, ref)
                rows.append(s)
                print(
                    f"{rare:6} {nfe:4} {label:30} reward {s['reward']:8.3f} ± {s['reward_se']:.3f}  "
                    f"hit {s['hit']:.2f}  held {s['held_out']:7.3f}  {s['seconds']:.1f}s",
                    flush=True,
                )
    counting = tune_counting(args) if args.counting_prompts else []
    md = [
        f"Tuning (seed {TUNE_SEED}, prompt ids tune-*, {args.prompts} searches per cell; never the evaluation "
        "seed). Reward -||x - rare||^2 (higher is better), mean ± s.e.; vs svdd = paired difference by search.",
        "",
        "| scenario | budget | config | NFE | reward | vs svdd | rare hit | held-out log p0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        vs = f"{s['vs_svdd']:+.3f} ± {s['vs_svdd_se']:.3f}" if "vs_svdd" in s else "—"
        md.append(
            f"| {s['scenario']} | {s['budget']} | {s['label']} | {s['nfe']:.0f} | {s['reward']:.3f} ± "
            f"{s['reward_se']:.3f} | {vs} | {s['hit']:.2f} | {s['held_out']:.2f} |"
        )
    if counting:
        md += [
            "",
            f"Counting task (built-in `shapes` model, reward `counting`), {args.counting_prompts} tuning prompts x "
            f"{args.counting_seeds} seed(s), {args.counting_nfe} NFE, VP-SDE uniform grid g = 8 s^2 (RBF's tuned "
            "sampler).",
            "",
            "| config | NFE | reward (-RSS) | accuracy | seconds |",
            "|---|---|---|---|---|",
        ]
        for c in counting:
            md.append(
                f"| {c['label']} | {c['nfe']:.0f} | {c['reward']:.3f} ± {c['reward_se']:.3f} | "
                f"{c['accuracy']:.3f} ± {c['accuracy_se']:.3f} | {c['seconds']:.0f} |"
            )
    save("adaptive_tune", {"mixture": rows, "counting": counting, "prompts": args.prompts}, "\n".join(md))


COUNTING_GRID: list[tuple[str, str, dict[str, Any]]] = [
    ("rbf, 8 chains (tuned)", "rbf", {"n_chains": 8}),
    ("svdd", "svdd", {}),
    ("abf (defaults)", "abf", {}),
    ("abf, 8 chains, explore 0.5", "abf", {"n_chains": 8, "chain_nfe": 0}),
    ("vt (defaults)", "vt", {}),
]


def without_name(method) -> dict[str, Any]:
    return {k: v for k, v in method.settings().items() if k != "name"}


def tune_counting(args) -> list[dict]:
    from benchmarks.common import run_counting
    from benchmarks.sampler_sweep import tuning_prompts

    model, reward = build_model("shapes"), build_reward("counting")
    spec = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=8, grid="uniform")
    texts = tuning_prompts(args.counting_prompts)
    tasks = [(Prompt(f"t{i}-s{s}", p), s) for s in range(args.counting_seeds) for i, p in enumerate(texts)]
    ctx = InProcessExecutor(ParticleEngine(model, spec), reward).context
    out = []
    for label, name, settings in COUNTING_GRID:
        method = sized(name, settings, args.counting_nfe, ctx)
        t0 = time.perf_counter()
        results, acc = run_counting(model, spec, reward, None, name, without_name(method), tasks)
        rewards = [r.reward for r in results]
        row = {"label": label, "settings": method.settings(), "nfe": sum(r.nfe for r in results) / len(results)}
        row["reward"], row["reward_se"] = mean_se(rewards)
        row["accuracy"], row["accuracy_se"] = mean_se(acc.double().tolist())
        row["seconds"] = time.perf_counter() - t0
        out.append(row)
        print(f"counting {label:30} reward {row['reward']:.3f} acc {row['accuracy']:.3f} {row['seconds']:.0f}s")
    return out


def mixture(args) -> None:
    rows: list[dict] = []
    raw: dict[tuple[str, int, str], dict] = {}
    for rare in SCENARIOS:
        for nfe in args.budgets:
            for name in EVAL_METHODS:
                row = run_mixture(rare, name, {}, nfe, args.prompts, EVAL_SEED, "eval")
                raw[(rare, nfe, name)] = row
                s = summary(row)
                rows.append(s)
                print(
                    f"{rare:6} {nfe:4} {name:5} reward {s['reward']:8.3f} ± {s['reward_se']:.3f}  "
                    f"hit {s['hit']:.2f}  held {s['held_out']:7.3f}  {s['seconds']:.1f}s",
                    flush=True,
                )
    for s in rows:
        key = (s["scenario"], s["budget"])
        for ref in ("svdd", "rbf"):
            if s["method"] != ref:
                a, b = raw[(*key, s["method"])], raw[(*key, ref)]
                s[f"vs_{ref}"], s[f"vs_{ref}_se"] = paired(a, b)
                s[f"held_vs_{ref}"], s[f"held_vs_{ref}_se"] = paired(a, b, "held_out")
    md = [
        f"Evaluation: {args.prompts} independent searches per cell (seed {EVAL_SEED}, prompt ids eval-*), paper "
        "sampler (VP-SDE, g = 3 s^2, 10 steps). Reward -||x - rare mode||^2; held-out = exact log p0(x); hit = "
        "the final sample belongs to the rare mode. Mean ± s.e.; vs = paired difference by search (± s.e.). "
        "Units: compute units with c_d = 1 and c_v = 1 (NFE + verifier calls).",
        "",
        "| scenario | budget | method | NFE | units | reward | vs svdd | vs rbf | rare hit | held-out "
        "| held-out vs svdd |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def vs(s: dict, key: str) -> str:
        return f"{s[key]:+.3f} ± {s[key + '_se']:.3f}" if key in s else "—"

    for s in rows:
        md.append(
            f"| {s['scenario']} | {s['budget']} | {s['method']} | {s['nfe']:.0f} | "
            f"{s['nfe'] + s['verifier_calls']:.0f} | {s['reward']:.3f} ± "
            f"{s['reward_se']:.3f} | {vs(s, 'vs_svdd')} | {vs(s, 'vs_rbf')} | {s['hit']:.2f} ± {s['hit_se']:.2f} | "
            f"{s['held_out']:.2f} ± {s['held_out_se']:.2f} | {vs(s, 'held_vs_svdd')} |"
        )
    save("adaptive_mixture", {"prompts": args.prompts, "seed": EVAL_SEED, "rows": rows}, "\n".join(md))


def polish(args) -> None:
    """vt's local search at the end (`polish`, chosen on the counting task's hard tuning prompts) on both mixture
    scenarios, against vt with its defaults and SVDD, on the evaluation searches: does it help or hurt there?"""
    rows: list[str] = []
    for rare in SCENARIOS:
        for nfe in args.budgets:
            svdd = run_mixture(rare, "svdd", {}, nfe, args.prompts, EVAL_SEED, "eval")
            plain = run_mixture(rare, "vt", {}, nfe, args.prompts, EVAL_SEED, "eval")
            pol = run_mixture(rare, "vt", {"polish": args.share}, nfe, args.prompts, EVAL_SEED, "eval")
            cells = []
            for row in (plain, pol):
                s = summary(row)
                d_svdd, se_svdd = paired(row, svdd)
                cells.append(
                    f"{s['reward']:.3f} ± {s['reward_se']:.3f} | {d_svdd:+.3f} ± {se_svdd:.3f} | {s['hit']:.2f}"
                )
            d, se = paired(pol, plain)
            rows.append(f"| {rare} | {nfe} | {cells[0]} | {cells[1]} | {d:+.3f} ± {se:.3f} |")
            print(rows[-1], flush=True)
    md = [
        f"vt (defaults) with and without `polish: {args.share}` (depth 3, width 4) on the rare-mode mixtures: "
        f"{args.prompts} searches per cell (seed {EVAL_SEED}, prompt ids eval-*), paper sampler (VP-SDE, g = 3 s^2, "
        "10 steps). Reward -||x - rare mode||^2, mean ± s.e.; paired differences by search.",
        "",
        "| scenario | NFE | vt reward | vt - svdd | vt hit | polish reward | polish - svdd | polish hit "
        "| polish - vt |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    save("adaptive_mixture_polish", {"prompts": args.prompts, "seed": EVAL_SEED, "share": args.share}, "\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune")
    t.add_argument("--prompts", type=int, default=100)
    t.add_argument("--counting-prompts", type=int, default=24, help="0: skip the counting task")
    t.add_argument("--counting-seeds", type=int, default=1)
    t.add_argument("--counting-nfe", type=int, default=100)
    m = sub.add_parser("mixture")
    m.add_argument("--prompts", type=int, default=200)
    m.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 300, 500, 1000])
    po = sub.add_parser("polish")
    po.add_argument("--prompts", type=int, default=200)
    po.add_argument("--budgets", type=int, nargs="+", default=[100, 300, 500])
    po.add_argument("--share", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"tune": tune, "mixture": mixture, "polish": polish}[args.command](args)


if __name__ == "__main__":
    main()
