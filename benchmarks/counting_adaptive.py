"""Adaptive search on the built-in counting task: successive halving (`sh`) and the other methods against
Best-of-N, by NFE and by compute units, paired by prompt over seeds.

Best-of-N and `sh` on the linear ODE are functions of the same trajectories: trajectory i has the same noise
(NoiseKey(i, ...)) in both, the ODE adds none, and `sh` only stops paying for some of them at its checkpoints.
So one recorded set of N trajectories per (prompt, seed) (the counting reward of every trajectory's x0 estimate
at every step, and the held-out score of every final sample) gives both methods' exact outcome at every budget
up to N trajectories. `eval` replays a sample of (prompt, seed) pairs through the real `sh` and `bon` methods
and checks the replay against them (same reward, held-out score and NFE) before it reports anything.

    python -m benchmarks.counting_adaptive trace tune    # record tuning trajectories (tuning prompts, seed 101)
    python -m benchmarks.counting_adaptive tune          # choose sh's checkpoints and keep on them
    python -m benchmarks.counting_adaptive trace eval    # record evaluation trajectories (50 prompts x seeds 0-2)
    python -m benchmarks.counting_adaptive eval          # report (and check the replay against real runs)
    python -m benchmarks.counting_adaptive sde           # real runs of the SDE methods (rbf, abf, vt, svdd, smc)

Trajectories are kept under benchmarks/.cache/ (not committed; about 2 MB per 50 prompt-seeds); the figures go
to benchmarks/results/counting_adaptive_*.{json,md} and a plot.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, mean_se, save

CACHE = Path(__file__).resolve().parent / ".cache"
BUDGETS = (50, 100, 300, 500, 1000)
STEPS = 10
TUNE_SEED = 101
EVAL_SEEDS = (0, 1, 2)
# The grid searched on tuning prompts: checkpoints (fractions of the 10-step grid) and the fraction kept.
TUNE_GRID = [
    (cps, keep)
    for cps in ((0.1,), (0.2,), (0.3,), (0.4,), (0.5,), (0.2, 0.4), (0.1, 0.3), (0.2, 0.5), (0.3, 0.6), (0.2, 0.4, 0.6))
    for keep in (0.1, 0.2, 0.25, 0.33, 0.5)
]


# -- recording trajectories ----------------------------------------------------------------------------------


def record(kind: str, n: int, prompts: int, seeds: tuple[int, ...], score_steps: tuple[int, ...] = ()) -> Path:
    """Append one JSON line per (seed, prompt) to the cache: rewards[step][trajectory] (null at a step not in
    `score_steps`, when given; the last step is always scored), held_out[trajectory]."""
    import torch  # noqa: F401  (imported before the model for thread settings)

    from flowscale_ray.builtin import shapes
    from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
    from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
    from flowscale_ray.models import build_model
    from flowscale_ray.prompts import Prompt

    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"counting_ode_{kind}.jsonl"
    done = {(d["seed"], d["id"]) for d in read(path)} if path.exists() else set()
    if kind == "tune":
        from benchmarks.sampler_sweep import tuning_prompts

        texts, prefix = tuning_prompts(prompts), "tune"
    else:
        texts, prefix = list(shapes.evaluation_prompts())[:prompts], "eval"
    spec = SamplerSpec(**SAMPLER_PRESETS["linear-ode"])
    model, both = build_model("shapes"), _Both()
    started = time.perf_counter()
    for seed in seeds:
        for i, text in enumerate(texts):
            pid = f"{prefix}-{i:03d}"
            if (seed, pid) in done:
                continue
            tracer = _Tracer(n, both, score_steps)
            ex = InProcessExecutor(ParticleEngine(model, spec), both, None, in_flight=1)
            list(ex.run([SearchTask(Prompt(pid, text), tracer, seed)]))
            with path.open("a") as f:
                f.write(json.dumps({"seed": seed, "id": pid, "prompt": text, **tracer.out}) + "\n")
            print(f"{kind} seed {seed} {pid}: {time.perf_counter() - started:.0f}s", flush=True)
    return path


class _Both:
    """The counting reward, and the held-out counter on the batch the tracer asks for (its final samples)."""

    name = "counting"

    def __init__(self) -> None:
        from flowscale_ray.rewards import build_reward

        self.reward, self.held = build_reward("counting"), build_reward("counting_heldout")
        self.want = False
        self.scores: list[float] = []

    def __call__(self, x, prompts):
        if self.want:
            self.scores = self.held(x, prompts).tolist()
        return self.reward(x, prompts)


def _tracer_class():
    from flowscale_ray.search.base import SearchMethod, spent
    from flowscale_ray.search.protocol import (
        STREAM_INIT,
        Batch,
        Expand,
        Init,
        Move,
        NoiseKey,
        PidCounter,
        SearchOutcome,
        StepRecord,
    )

    @dataclass(frozen=True)
    class Config:
        n: int = 200

    class Tracer(SearchMethod):
        """Best-of-N's trajectories one step at a time, every state scored."""

        name = "trace"

        def __init__(self, n: int, both: _Both, score_steps: tuple[int, ...]) -> None:
            super().__init__(Config(n))
            self.both, self.score_steps = both, score_steps
            self.out: dict[str, Any] = {}

        def planned_nfe(self, ctx):
            return self.config.n * ctx.steps

        def search(self, ctx, seed):
            n, times, new_pid = self.config.n, ctx.search_times, PidCounter()
            last = len(times) - 1

            def scored(k: int) -> bool:
                return not self.score_steps or k in self.score_steps or k == last

            inits = tuple(Init(new_pid(), NoiseKey(i, 0, 0, STREAM_INIT), scored(0)) for i in range(n))
            evals = yield Batch(inits=inits)
            cur = [i.pid for i in inits]
            rewards, nfe = [[evals[p].reward for p in cur]], spent(evals)
            for k in range(1, len(times)):
                self.both.want = k == last
                moves = [
                    Expand(new_pid(), p, (Move(times[k], NoiseKey(i, k, 0)),), scored(k)) for i, p in enumerate(cur)
                ]
                evals = yield Batch(expands=tuple(moves), release=tuple(cur))
                nfe += spent(evals)
                cur = [e.pid for e in moves]
                rewards.append([evals[p].reward for p in cur])
            self.both.want = False
            self.out = {
                "rewards": [[None if math.isnan(v) else v for v in row] for row in rewards],
                "held_out": self.both.scores,
            }
            best = max(range(n), key=lambda i: rewards[-1][i])
            record = StepRecord(step=len(times) - 1, s=times[-1], nfe=nfe, candidates=n, best_reward=rewards[-1][best])
            return SearchOutcome(
                best=cur[best], reward=rewards[-1][best], nfe=nfe, records=[record], selected=[cur[best]]
            )

    return Tracer


def _Tracer(n: int, both: _Both, score_steps: tuple[int, ...] = ()):  # built lazily: importing this is cheap
    return _tracer_class()(n, both, score_steps)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- replaying Best-of-N and successive halving --------------------------------------------------------------


def sh_method(budget: int, checkpoints: tuple[float, ...], keep: float):
    from flowscale_ray.search.protocol import SearchContext
    from flowscale_ray.search.successive_halving import SuccessiveHalving, SuccessiveHalvingConfig

    ctx = SearchContext(grid=tuple(1 - i / STEPS for i in range(STEPS + 1)))  # only the step count matters here
    return SuccessiveHalving(SuccessiveHalvingConfig(checkpoints=checkpoints, keep=keep)).with_budget(budget, ctx), ctx


@functools.cache
def _schedule(checkpoints: tuple[float, ...], keep: float):
    from flowscale_ray.search.protocol import SearchContext
    from flowscale_ray.search.successive_halving import SuccessiveHalving, SuccessiveHalvingConfig

    ctx = SearchContext(grid=tuple(1 - i / STEPS for i in range(STEPS + 1)))
    return SuccessiveHalving(SuccessiveHalvingConfig(checkpoints=checkpoints, keep=keep)), ctx


@functools.cache
def trajectories_for(method: str, budget: int, checkpoints: tuple[float, ...], keep: float) -> int:
    if method == "bon":
        return budget // STEPS
    sized, ctx = sh_method(budget, checkpoints, keep)
    return sized._n(ctx)


def replay(trace: dict[str, Any], idx: list[int], checkpoints: tuple[float, ...], keep: float) -> dict[str, float]:
    """`sh` with these settings run on trajectories `idx` (checkpoints () and keep 1: Best-of-len(idx))."""
    r = trace["rewards"]
    last = len(r) - 1
    live = list(idx)
    nfe, calls, at = len(live), 0, 0
    if checkpoints:
        method, ctx = _schedule(checkpoints, keep)
        stops, counts = method.stops(ctx), method.survivors(len(idx), ctx)
    else:
        stops, counts = [last], [len(idx)]
    for leg, (k, count) in enumerate(zip(stops, counts, strict=True)):
        if leg > 0:  # keep the best `count` at the previous stop, ties to the earlier trajectory (rank_desc)
            prev = stops[leg - 1]
            live = sorted(sorted(live, key=lambda i: (-r[prev][i], i))[:count])
        nfe += len(live) * (k - at)
        calls += len(live)
        at = k
    best = sorted(live, key=lambda i: (-r[last][i], i))[0]
    reward = r[last][best]
    return {
        "reward": reward,
        "accuracy": float(reward == 0),
        "held_out": trace["held_out"][best],
        "nfe": nfe,
        "verifier_calls": calls + 1,  # scored at every stop, plus the final score
    }


# -- tuning --------------------------------------------------------------------------------------------------


def tune(args) -> None:
    traces = read(CACHE / "counting_ode_tune.jsonl")
    n = len(traces[0]["rewards"][0])
    rows = []
    for budget in args.budgets:
        per = {}
        for label, cps, keep in [("bon", (), 1.0), *[(f"sh {list(c)} keep {k}", c, k) for c, k in TUNE_GRID]]:
            m = trajectories_for("bon" if not cps else "sh", budget, cps, keep)
            if m < 1 or m > n:
                continue
            reps = n // m  # disjoint groups of trajectories: independent replicates of the method
            acc = [
                np.mean([replay(t, list(range(j * m, (j + 1) * m)), cps, keep)["accuracy"] for j in range(reps)])
                for t in traces
            ]
            per[label] = (float(np.mean(acc)), cps, keep, m)
        bon = per.get("bon", (math.nan,))[0]
        for label, (acc, cps, keep, m) in sorted(per.items(), key=lambda kv: -kv[1][0]):
            rows.append(
                {
                    "budget": budget,
                    "config": label,
                    "checkpoints": list(cps),
                    "keep": keep,
                    "trajectories": m,
                    "accuracy": acc,
                    "vs_bon": acc - bon,
                }
            )
    md = [
        f"Tuning ({len(traces)} tuning prompts, seed {TUNE_SEED}, {n} recorded linear-ODE trajectories each; accuracy "
        "averaged over disjoint groups of trajectories). Top 8 per budget, and Best-of-N.",
        "",
        "| budget | config | trajectories | accuracy | vs bon |",
        "|---|---|---|---|---|",
    ]
    for budget in args.budgets:
        sub = [r for r in rows if r["budget"] == budget]
        shown = sub[:8] + [r for r in sub[8:] if r["config"] == "bon"]
        md += [
            f"| {r['budget']} | {r['config']} | {r['trajectories']} | {r['accuracy']:.3f} | {r['vs_bon']:+.3f} |"
            for r in shown
        ]
    # The choice: the best mean accuracy over the budgets every config could be replayed at.
    scores: dict[str, list[float]] = {}
    for r in rows:
        scores.setdefault(r["config"], []).append(r["accuracy"])
    full = {k: float(np.mean(v)) for k, v in scores.items() if len(v) == len(args.budgets)}
    choice = max(full, key=lambda k: full[k])
    md += [
        "",
        f"Chosen (best mean accuracy over budgets {list(args.budgets)}): **{choice}** ({full[choice]:.3f}; "
        f"bon {full.get('bon', math.nan):.3f}).",
    ]
    # How early the final reward can be read: correlation (per prompt, over its trajectories) between the reward
    # of the x0 estimate after k steps and the final reward.
    profile = []
    for k in range(len(traces[0]["rewards"])):
        corr = []
        for t in traces:
            a, b = np.array(t["rewards"][k], dtype=float), np.array(t["rewards"][-1], dtype=float)
            if a.std() > 0 and b.std() > 0:
                corr.append(float(np.corrcoef(a, b)[0, 1]))
        profile.append(float(np.mean(corr)) if corr else math.nan)
    md += [
        "",
        "How early the final reward can be read (mean over prompts of the correlation, over a prompt's trajectories, "
        "between the reward of the x0 estimate at step k and the final reward):",
        "",
        "| step k | " + " | ".join(str(k) for k in range(len(profile))) + " |",
        "|---|" + "---|" * len(profile),
        "| correlation | " + " | ".join(f"{c:.2f}" for c in profile) + " |",
    ]
    doc = {"rows": rows, "choice": choice, "mean_accuracy": full, "informativeness": profile}
    save("counting_adaptive_tune", doc, "\n".join(md))


# -- evaluation ----------------------------------------------------------------------------------------------


def paired(a: dict[str, list[float]], b: dict[str, list[float]]) -> tuple[float, float]:
    """Mean and standard error over prompts of (a - b), each prompt's values averaged over its seeds first."""
    return mean_se(np.mean(a[p]) - np.mean(b[p]) for p in a)


def on_seeds(res: dict[str, Any], seeds: list[int], key: str = "accuracy") -> dict[str, list[float]]:
    """res's values of `key` restricted to `seeds` (a cell's values are in the order of its "seeds"), so that a
    cell run on fewer seeds is compared with the same seeds of its reference."""
    have = res.get("seeds", seeds)
    at = [have.index(s) for s in seeds]
    return {p: [v[i] for i in at] for p, v in res[key].items()}


def both_exact(res: dict[str, Any], bon_accuracy: dict[str, list[float]], bon_held: dict[str, list[float]]):
    """(pairs, mean, s.e.) of the held-out difference over the (prompt, seed) pairs where the cell and Best-of-N
    (given on the cell's seeds) are both exact; None with fewer than two such pairs."""
    d = [
        h - bh
        for p in res["accuracy"]
        for a, h, ba, bh in zip(res["accuracy"][p], res["held_out"][p], bon_accuracy[p], bon_held[p], strict=True)
        if a == 1 and ba == 1
    ]
    if len(d) < 2:
        return None
    return len(d), float(np.mean(d)), float(np.std(d, ddof=1) / math.sqrt(len(d)))


def stop_at_first_exact(bon: dict[int, dict[str, Any]], seeds: list[int]):
    """Best-of-N run until its first exact sample, from its cells at the study's budgets (the same seed draws the
    same samples first, so a larger budget's samples include a smaller one's): (pairs consistent with that, pairs,
    lower and upper bound of the mean NFE, share of pairs solved within the largest budget); None without every
    budget."""
    budgets = sorted(b for b in bon if b in BUDGETS)
    if budgets != sorted(BUDGETS):
        return None
    low, high, nested, solved = [], [], 0, []
    for p in bon[budgets[0]]["accuracy"]:
        for k in range(len(seeds)):
            solved_at = [bon[b]["accuracy"][p][k] == 1 for b in budgets]
            nested += all(not a or b for a, b in itertools.pairwise(solved_at))
            first = next((i for i, ok in enumerate(solved_at) if ok), None)
            solved.append(first is not None)
            if first is None:  # never solved: it spends the cap
                low.append(budgets[-1])
                high.append(budgets[-1])
            else:  # solved somewhere after the previous budget's samples, at the latest at this budget
                low.append((budgets[first - 1] if first else 0) + STEPS)
                high.append(budgets[first])
    return nested, len(low), float(np.mean(low)), float(np.mean(high)), float(np.mean(solved))


def per_prompt_mean(values: dict[str, list[float]]) -> tuple[float, float]:
    """Mean and standard error over prompts, each prompt's values averaged over its seeds first."""
    return mean_se(np.mean(v) for v in values.values())


def replayed(traces: list[dict], method: str, budget: int, cps: tuple[float, ...], keep: float) -> dict | None:
    """{metric: {prompt: [value per seed]}} for bon or sh at this budget; None if the traces are too short."""
    m = trajectories_for(method, budget, cps, keep)
    if m < 1 or m > len(traces[0]["rewards"][0]):
        return None
    out: dict[str, dict[str, list[float]]] = {}
    for t in traces:
        res = replay(t, list(range(m)), cps if method == "sh" else (), keep if method == "sh" else 1.0)
        for key, value in res.items():
            out.setdefault(key, {}).setdefault(t["id"], []).append(float(value))
    return out


def check_replay(traces: list[dict], cps: tuple[float, ...], keep: float, pairs: int, budgets=(100, 300)) -> list[dict]:
    """Run the real methods on the first `pairs` (prompt, seed) pairs and compare with the replay."""
    from benchmarks.common import run_counting
    from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
    from flowscale_ray.models import build_model
    from flowscale_ray.prompts import Prompt
    from flowscale_ray.rewards import build_reward

    model, reward, held = build_model("shapes"), build_reward("counting"), build_reward("counting_heldout")
    spec = SamplerSpec(**SAMPLER_PRESETS["linear-ode"])
    sample = traces[:pairs]
    checks = []
    for budget in budgets:
        for method in ("bon", "sh"):
            settings = (
                {"n": budget // STEPS} if method == "bon" else {"checkpoints": cps, "keep": keep, "nfe_budget": budget}
            )
            tasks = [(Prompt(t["id"], t["prompt"]), t["seed"]) for t in sample]
            results, _ = run_counting(model, spec, reward, held, method, settings, tasks)
            real = {(r.prompt.id, r.seed): r for r in results}
            for t in sample:
                r = real[(t["id"], t["seed"])]
                rep = replay(
                    t,
                    list(range(trajectories_for(method, budget, cps, keep))),
                    cps if method == "sh" else (),
                    keep if method == "sh" else 1.0,
                )
                checks.append({
                    "method": method, "budget": budget, "id": t["id"], "seed": t["seed"],
                    "real": [r.reward, r.held_out, r.nfe, r.verifier_calls],
                    "replay": [rep["reward"], rep["held_out"], rep["nfe"], rep["verifier_calls"]],
                })  # fmt: skip
    return checks


def eval_(args) -> None:
    tune_doc = json.loads((RESULTS / "counting_adaptive_tune.json").read_text())
    chosen = next(r for r in tune_doc["rows"] if r["config"] == tune_doc["choice"])
    cps, keep = tuple(chosen["checkpoints"]), chosen["keep"]
    path = CACHE / "counting_ode_eval.jsonl"
    traces = [t for t in read(path) if t["seed"] in args.seeds] if path.exists() else []
    results: dict[str, dict[int, dict]] = {}
    checks: list[dict] = []
    mismatches: list[dict] = []
    if traces:  # bon and sh replayed from recorded trajectories
        prompts = sorted({t["id"] for t in traces})
        complete = [p for p in prompts if sum(t["id"] == p for t in traces) == len(args.seeds)]
        traces = [t for t in traces if t["id"] in complete]
        checks = check_replay(traces, cps, keep, args.check) if args.check else []
        mismatches = [c for c in checks if not np.allclose(c["real"], c["replay"], rtol=0, atol=1e-4)]
        for budget in BUDGETS:
            for method in ("bon", "sh"):
                res = replayed(traces, method, budget, cps, keep)
                if res is not None:
                    results.setdefault(method, {})[budget] = res
    else:  # real runs only
        from flowscale_ray.builtin import shapes

        complete = [f"eval-{i:03d}" for i in range(min(args.prompts, len(shapes.evaluation_prompts())))]
    print(f"{len(complete)} prompts x seeds {list(args.seeds)}")
    for method, by_budget in _load_sde(complete, args.seeds).items():
        results.setdefault(method, {}).update(by_budget)
    rows = []
    for method, by_budget in results.items():
        for budget, res in sorted(by_budget.items()):
            row: dict[str, Any] = {"method": method, "budget": budget, "seeds": res.get("seeds", list(args.seeds))}
            row["runs_of"] = res.get("source", method)  # another method's runs where the settings are the same
            for key in ("accuracy", "reward", "held_out", "nfe", "verifier_calls"):
                row[key], row[f"{key}_se"] = per_prompt_mean(res[key])
            units = {
                p: [n + c for n, c in zip(res["nfe"][p], res["verifier_calls"][p], strict=True)] for p in res["nfe"]
            }
            row["units_c_v_1"] = per_prompt_mean(units)[0]
            bon = results["bon"].get(budget)
            if bon is not None and method != "bon":
                bon_accuracy, bon_held = on_seeds(bon, row["seeds"]), on_seeds(bon, row["seeds"], "held_out")
                row["vs_bon"], row["vs_bon_se"] = paired(res["accuracy"], bon_accuracy)
                row["held_out_vs_bon"], row["held_out_vs_bon_se"] = paired(res["held_out"], bon_held)
                row["held_out_both_exact"] = both_exact(res, bon_accuracy, bon_held)
            rows.append(row)
    bon1000 = results["bon"].get(1000)
    targets = {}
    if bon1000 is not None:
        for method in results:
            if method == "bon":
                continue
            for budget in (300,):
                if budget in results[method]:
                    cell = results[method][budget]
                    d, se = paired(cell["accuracy"], on_seeds(bon1000, cell.get("seeds", list(args.seeds))))
                    targets[f"{method}@{budget} - bon@1000"] = (d, se)
    how = (
        f"bon and sh: linear ODE, replayed from {len(traces[0]['rewards'][0])} recorded trajectories per (prompt, "
        f"seed) (checked against real runs: {len(checks) - len(mismatches)} of {len(checks)} identical); sh: "
        f"checkpoints {list(cps)}, keep {keep}. "
        if traces
        else "Real runs: bon on the linear ODE, the others on RBF's tuned VP-SDE (uniform grid, g = 8 s^2). "
    )
    md = [
        f"Built-in counting task, {len(complete)} evaluation prompts x seeds {list(args.seeds)}; per-prompt values "
        "averaged over the seeds, then mean ± s.e. over prompts; 'vs bon' is the paired accuracy difference at the "
        f"same budget (for the held-out score too: 'held-out vs bon'). {how}Compute units with c_d = 1, c_v = 1.",
        "",
        "| method | budget | seeds | NFE | verifier calls | units (c_v = 1) | accuracy | vs bon | reward (-RSS) "
        "| held-out | held-out vs bon |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = f"{r['vs_bon']:+.3f} ± {r['vs_bon_se']:.3f}" if "vs_bon" in r else "—"
        held_vs = f"{r['held_out_vs_bon']:+.3f} ± {r['held_out_vs_bon_se']:.3f}" if "vs_bon" in r else "—"
        label = r["method"] if r["runs_of"] == r["method"] else f"{r['method']} (= {r['runs_of']})"
        md.append(
            f"| {label} | {r['budget']} | {','.join(map(str, r['seeds']))} | {r['nfe']:.0f} | "
            f"{r['verifier_calls']:.0f} | {r['units_c_v_1']:.0f} | "
            f"{r['accuracy']:.3f} ± {r['accuracy_se']:.3f} | {vs} | {r['reward']:.3f} | {r['held_out']:.3f} | "
            f"{held_vs} |"
        )
    md += [
        "",
        "Held-out score where the method and Best-of-N are both exact (same prompt, seed and budget): is an exact "
        "sample of a search worse, by the held-out counter, than an exact sample of Best-of-N? (mean ± s.e. over "
        "the pairs; 'held-out vs bon' above mixes this with which prompts each method solves.)",
        "",
        "| method | budget | pairs both exact | held-out difference |",
        "|---|---|---|---|",
    ]
    for r in rows:
        if r.get("held_out_both_exact"):
            n, d, se = r["held_out_both_exact"]
            md.append(f"| {r['method']} | {r['budget']} | {n} | {d:+.3f} ± {se:.3f} |")
    stop = stop_at_first_exact(results["bon"], list(args.seeds))
    if stop is not None:
        nested, pairs, low, high, acc = stop
        md += [
            "",
            f"Best-of-N stopping at its first exact sample (a reward with a known maximum), capped at "
            f"{max(results['bon'])} NFE: its runs are nested ({nested} of {pairs} (prompt, seed) pairs consistent: "
            f"solved at one budget, solved at every larger one), so it reaches {acc:.3f} spending between "
            f"{low:.0f} and {high:.0f} NFE per prompt on average (bounds: for each pair, the study's budget before "
            "the first one at which it is solved plus one sample, and that first budget).",
        ]
    if targets:
        md += ["", "Against Best-of-N at 1000 NFE (paired accuracy difference):", ""]
        md += [f"- {k}: {d:+.3f} ± {se:.3f}" for k, (d, se) in targets.items()]
    save(
        "counting_adaptive_eval",
        {"settings": {"checkpoints": list(cps), "keep": keep}, "rows": rows, "targets": targets, "checks": checks},
        "\n".join(md),
    )
    _plot(rows)
    if mismatches:
        print(f"WARNING: {len(mismatches)} replay mismatches: {mismatches[:3]}")


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in dict.fromkeys(r["method"] for r in rows):
        sub = [r for r in rows if r["method"] == method]
        for ax, key in zip(axes, ("nfe", "units_c_v_1"), strict=True):
            ax.errorbar(
                [r[key] for r in sub],
                [r["accuracy"] for r in sub],
                [r["accuracy_se"] for r in sub],
                marker="o",
                ms=3,
                capsize=2,
                label=method,
            )
    for ax, label in zip(axes, ("NFE per prompt", "compute units per prompt (c_d = 1, c_v = 1)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("exact-count accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "counting_adaptive.png", dpi=80)


# -- SDE methods (real runs) ---------------------------------------------------------------------------------

SDE_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("base", {}),  # one sample on the linear ODE, 10 NFE whatever the budget (run with --budgets 10)
    "bon": ("bon", {}),  # the linear ODE (its best sampler in benchmarks.counting_study)
    # Controls for the sampler (the searches run on the VP-SDE, Best-of-N on the linear ODE): does the held-out score
    # follow the sampler or the search?
    "base_vp": ("base", {}),
    "bon_vp": ("bon", {}),
    "rbf": ("rbf", {"n_chains": 8}),  # the tuned setting (benchmarks.rbf_sweep)
    "abf": ("abf", {"n_chains": 8, "chain_nfe": 0}),  # chains as RBF's (adaptive_study tune_counting)
    "abf_late": ("abf", {"n_chains": 8, "chain_nfe": 0, "explore": 0.0, "quota_power": 2.0}),
    "vt": ("vt", {"n_chains": 8, "chain_nfe": 0}),
    "vt4": ("vt", {"n_chains": 4, "chain_nfe": 0}),  # 4 chains: best at 100 NFE on tuning prompts (counting_probes vt)
    # Chains by budget, one per 25 NFE up to 8: the chain counts chosen on tuning prompts at 100 NFE (4, counting_probes
    # vt) and at 500 (8, benchmarks.rbf_sweep). At each budget it *is* vt4 or vt (same effective settings, so the
    # same requests and samples): its cells reuse theirs (`effective` checks that) unless run themselves.
    "vt_scaled": ("vt", {"n_chains": 8, "chain_nfe": 25}),
    "svdd": ("svdd", {}),
    "smc": ("smc", {}),
    "smc_late": ("smc", {"start": 0.5}),  # no scoring or resampling in the first half (tuning prompts: docs)
    # vt (8 chains) on half the budget, then local search around its pick (`polish`, search.local): the best cell of
    # the hard tuning prompts at 300 NFE (counting_probes hard / polish), run on the evaluation prompts as is
    "polish": ("vt", {"n_chains": 8, "chain_nfe": 0, "polish": 0.5}),
}


def sde(args) -> None:
    """Real runs of the SDE methods with RBF's tuned VP-SDE sampler; one JSON per (method, budget, seed)."""
    from benchmarks.common import run_counting
    from flowscale_ray.builtin import shapes
    from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
    from flowscale_ray.models import build_model
    from flowscale_ray.prompts import Prompt
    from flowscale_ray.rewards import build_reward
    from flowscale_ray.search.protocol import SearchContext

    model, reward, held = build_model("shapes"), build_reward("counting"), build_reward("counting_heldout")
    vp = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=8, grid="uniform")
    ode = SamplerSpec(**SAMPLER_PRESETS["linear-ode"])
    texts = list(shapes.evaluation_prompts())[: args.prompts]
    CACHE.mkdir(exist_ok=True)
    for name in args.methods:
        base_name = SDE_METHODS[name][0]
        for budget in args.budgets:
            for seed in args.seeds:
                path = CACHE / f"counting_sde_{name}_{budget}_{seed}.json"
                if path.exists():
                    continue
                spec = ode if sampler_of(name) == "ode" else vp
                method = study_method(name, budget, SearchContext(grid=spec.grid_times()))
                plain = {k: v for k, v in method.settings().items() if k != "name"}
                tasks = [(Prompt(f"eval-{i:03d}", t), seed) for i, t in enumerate(texts)]
                started = time.perf_counter()
                results, acc = run_counting(model, spec, reward, held, base_name, plain, tasks)
                doc = {
                    r.prompt.id: {
                        "accuracy": float(a), "reward": r.reward, "held_out": r.held_out,
                        "nfe": r.nfe, "verifier_calls": r.verifier_calls,
                    }
                    for r, a in zip(results, acc.tolist(), strict=True)
                }  # fmt: skip
                path.write_text(json.dumps({"settings": method.settings(), "prompts": doc}))
                print(
                    f"{name} {budget} seed {seed}: acc {float(acc.float().mean()):.3f} "
                    f"({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )


def sampler_of(name: str) -> str:
    """The sampler a study method runs on: the linear ODE for base and Best-of-N, else RBF's tuned VP-SDE."""
    return "ode" if name in ("base", "bon") else "vp"


def study_method(name: str, budget: int, ctx):
    """The study's method `name` (SDE_METHODS) sized to `budget` NFE on ctx's grid; base ignores the budget."""
    from flowscale_ray.search import METHODS

    base_name, settings = SDE_METHODS[name]
    method = METHODS[base_name](METHODS[base_name].Config(**settings))
    return method if base_name == "base" else method.with_budget(budget, ctx)


def effective(name: str, budget: int) -> tuple[str, str, dict[str, Any]]:
    """The method, sampler and settings `name` really runs with at `budget`: sized to it, chains as counted
    (`chain_nfe` resolved)."""
    from flowscale_ray.search.protocol import SearchContext

    method = study_method(name, budget, SearchContext(grid=tuple(1 - i / STEPS for i in range(STEPS + 1))))
    out = method.settings()
    if "chain_nfe" in out:
        out.update(n_chains=method.chains(), chain_nfe=0)
    return SDE_METHODS[name][0], sampler_of(name), out


def _cell(name: str, budget: int, seeds) -> tuple[str, list[int]]:
    """Whose runs report (name, budget): its own, else a method with the same effective settings there."""

    def runs(who: str) -> list[int]:
        return [s for s in seeds if (CACHE / f"counting_sde_{who}_{budget}_{s}.json").exists()]

    best = (name, runs(name))
    if budget == STEPS or len(best[1]) == len(seeds):
        return best
    mine = effective(name, budget)
    for other in SDE_METHODS:
        same = other != name and SDE_METHODS[other][0] != "base" and effective(other, budget) == mine
        if same and len(runs(other)) > len(best[1]):
            best = (other, runs(other))
    return best


def _load_sde(prompts: list[str], seeds) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for name in SDE_METHODS:
        for budget in (STEPS, *BUDGETS):
            source, have = _cell(name, budget, seeds)
            if not have:  # a cell is reported with the seeds it has (the table says which)
                continue
            docs = [CACHE / f"counting_sde_{source}_{budget}_{s}.json" for s in have]
            res: dict[str, Any] = {"seeds": have, "source": source}
            for p in docs:
                d = json.loads(p.read_text())["prompts"]
                for pid in prompts:
                    for key, value in d[pid].items():
                        res.setdefault(key, {}).setdefault(pid, []).append(float(value))
            out.setdefault(name, {})[budget] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("trace")
    tr.add_argument("kind", choices=["tune", "eval"])
    tr.add_argument("--trajectories", type=int, default=None, help="default: 128 (tune), 200 (eval)")
    tr.add_argument("--prompts", type=int, default=None, help="default: 32 (tune), 50 (eval)")
    tr.add_argument("--seeds", type=int, nargs="+", default=None)
    tr.add_argument("--score-steps", type=int, nargs="*", default=[], help="steps scored (default all; last always)")
    tu = sub.add_parser("tune")
    tu.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 300, 500])
    ev = sub.add_parser("eval")
    ev.add_argument("--seeds", type=int, nargs="+", default=list(EVAL_SEEDS))
    ev.add_argument("--check", type=int, default=6, help="(prompt, seed) pairs replayed through the real methods")
    ev.add_argument("--prompts", type=int, default=50)
    sd = sub.add_parser("sde")
    sd.add_argument("--methods", nargs="+", default=list(SDE_METHODS), choices=list(SDE_METHODS))
    sd.add_argument("--budgets", type=int, nargs="+", default=[100, 300])
    sd.add_argument("--seeds", type=int, nargs="+", default=list(EVAL_SEEDS))
    sd.add_argument("--prompts", type=int, default=50)
    args = ap.parse_args()
    if args.cmd == "trace":
        tune_ = args.kind == "tune"
        record(
            args.kind,
            args.trajectories or (128 if tune_ else 200),
            args.prompts or (32 if tune_ else 50),
            tuple(args.seeds or ((TUNE_SEED,) if tune_ else EVAL_SEEDS)),
            tuple(args.score_steps),
        )
    elif args.cmd == "tune":
        tune(args)
    elif args.cmd == "eval":
        eval_(args)
    else:
        sde(args)


if __name__ == "__main__":
    main()
