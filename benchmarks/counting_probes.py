"""Probes of the built-in counting task that decide which search can help there (tuning prompts, seed 101 only).

The questions, each answered with real runs of the model and reward (recorded trajectories or whole searches):

    python -m benchmarks.counting_probes lookahead   # does a short ODE roll-out predict the final count better
                                                     # than the one-step x0 estimate?
    python -m benchmarks.counting_probes coarse      # does a cheap few-step preview of a noise predict its full
                                                     # 10-step sample (coarse-to-fine Best-of-N)?
    python -m benchmarks.counting_probes smc         # SMC's `start` and temperature against Best-of-N and RBF
    python -m benchmarks.counting_probes vt          # vt's threshold at the reward's maximum, and its chains
    python -m benchmarks.counting_probes hard        # on hard tuning prompts at 300 NFE: chains, threshold, seed
                                                     # search, the sampler's noise (Best-of-N also at 1000)
    python -m benchmarks.counting_probes polish      # vt then local search around its pick (same prompts)
    python -m benchmarks.counting_probes renoise     # how local is that local search?
    python -m benchmarks.counting_probes noise-edge  # where does the VP-SDE's noise level break the sampler?

Raw records are kept under benchmarks/.cache/ (not committed; a rerun appends only what is missing); the tables go
to benchmarks/results/counting_probes_*.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import save

CACHE = Path(__file__).resolve().parent / ".cache"
SEED = 101
LOOK_STEPS = (2, 3)  # roll-outs from a state to s = 0 in this many Euler steps (1 and 2 NFE more than x0-hat)
COARSE_STEPS = (2, 3, 4, 5)


def _setup():
    import torch  # noqa: F401  (before the model: thread settings)

    from benchmarks.counting_adaptive import _Both
    from benchmarks.sampler_sweep import tuning_prompts
    from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
    from flowscale_ray.models import build_model

    return build_model("shapes"), _Both(), SamplerSpec, SAMPLER_PRESETS, tuning_prompts


def _run(model, spec, reward, method, pid: str, text: str) -> None:
    from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
    from flowscale_ray.prompts import Prompt

    ex = InProcessExecutor(ParticleEngine(model, spec), reward, None, in_flight=1)
    list(ex.run([SearchTask(Prompt(pid, text), method, SEED)]))


def _done(path: Path, key: str) -> set:
    return {json.loads(x)[key] for x in path.read_text().splitlines() if x.strip()} if path.exists() else set()


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _corr(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float("nan") if a.std() == 0 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1])


# -- look-ahead value estimates ---------------------------------------------------------------------------------


def _lookahead_method(n: int):
    from flowscale_ray.search.base import SearchMethod
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
        n: int = 64

    class Look(SearchMethod):
        """n linear-ODE trajectories; at every state, besides the next step, roll-outs to s = 0 in j equal steps."""

        name = "look"

        def __init__(self) -> None:
            super().__init__(Config(n))
            self.out: dict[str, Any] = {}

        def planned_nfe(self, ctx):
            return 0

        def search(self, ctx, seed):
            times, new = ctx.search_times, PidCounter()
            inits = tuple(Init(new(), NoiseKey(i, 0, 0, STREAM_INIT), True) for i in range(n))
            ev = yield Batch(inits=inits)
            cur = [i.pid for i in inits]
            x0 = [[ev[p].reward for p in cur]]
            looks: dict[str, list] = {str(j): [] for j in LOOK_STEPS}
            for k in range(1, len(times) + 1):
                s = times[k - 1]
                extra = []
                for j in LOOK_STEPS:
                    pts = tuple(s * (1 - (q + 1) / j) for q in range(j))
                    for i, p in enumerate(cur):
                        extra.append((j, Expand(new(), p, tuple(Move(t, NoiseKey(i, k, 1)) for t in pts), True)))
                s_to = times[k] if k < len(times) else 0.0
                moves = [Expand(new(), p, (Move(s_to, NoiseKey(i, k, 0)),), True) for i, p in enumerate(cur)]
                ev = yield Batch(expands=tuple(moves) + tuple(e for _, e in extra), release=tuple(cur))
                for j in LOOK_STEPS:
                    looks[str(j)].append([ev[e.pid].reward for jj, e in extra if jj == j])
                cur = [e.pid for e in moves]
                x0.append([ev[p].reward for p in cur])
            self.out = {"x0": x0, "looks": looks}
            rec = StepRecord(step=len(times), s=0.0, nfe=0, candidates=n, best_reward=max(x0[-1]))
            return SearchOutcome(best=cur[0], reward=x0[-1][0], nfe=0, records=[rec], selected=[cur[0]])

    return Look()


POLISH_GRID: list[tuple[float, int, int]] = [(1 / 3, 2, 4), (1 / 3, 3, 4), (1 / 3, 4, 4), (0.5, 3, 4)]


def polish(args) -> None:
    """vt (8 chains, VP-SDE) then local search around its pick (vt's `polish`, search.local), on the hard tuning
    prompts; (share, depth, width) = vt's (polish, polish_depth, polish_width)."""
    import torch

    from benchmarks.sampler_sweep import hard_tuning_prompts
    from flowscale_ray.builtin import counting
    from flowscale_ray.core.dynamics import SamplerSpec
    from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
    from flowscale_ray.models import build_model
    from flowscale_ray.prompts import Prompt
    from flowscale_ray.rewards import build_reward
    from flowscale_ray.search import METHODS

    model, reward = build_model("shapes"), build_reward("counting")
    spec = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=8, grid="uniform")
    tasks = [(Prompt(f"hard-{i:03d}", t), SEED) for i, t in enumerate(hard_tuning_prompts(args.prompts))]
    path = CACHE / "counting_hard_tune.jsonl"
    done = {(r["name"], json.dumps(r["settings"], sort_keys=True), r["budget"]) for r in _rows(path)}
    for budget in args.budgets:
        for index, (share, depth, width) in enumerate(POLISH_GRID):
            settings = {"inner": "vt", "n_chains": 8, "share": share, "depth": depth, "width": width}
            if (args.only and index not in args.only) or (
                "polish",
                json.dumps(settings, sort_keys=True),
                budget,
            ) in done:
                continue
            config = {"n_chains": 8, "chain_nfe": 0, "polish": share, "polish_depth": depth, "polish_width": width}
            method = METHODS["vt"](METHODS["vt"].Config(nfe_budget=budget, **config))
            started = time.perf_counter()
            ex = InProcessExecutor(ParticleEngine(model, spec), reward, None, in_flight=len(tasks))
            results = sorted(ex.run([SearchTask(p, method, seed) for p, seed in tasks]), key=lambda r: r.prompt.id)
            acc = counting.accuracy(torch.stack([r.image for r in results]), [r.prompt for r in results])
            row = {
                "name": "polish", "settings": settings, "budget": budget, "sampler": "vp",
                "accuracy": acc.float().tolist(), "reward": [r.reward for r in results],
                "nfe": float(np.mean([r.nfe for r in results])),
                "verifier_calls": float(np.mean([r.verifier_calls for r in results])),
            }  # fmt: skip
            if len(tasks) == args.prompts and not args.dry:
                with path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            print(
                f"polish {settings} {budget}: {np.mean(row['accuracy']):.3f} nfe {row['nfe']:.1f} "
                f"({time.perf_counter() - started:.0f}s)",
                flush=True,
            )


RENOISE_DEPTHS = (2, 3, 4, 5, 6)


def renoise(args) -> None:
    """How local is a local search? vt (8 chains, 200 NFE) on each hard tuning prompt, then `--tries` renoise-and-
    denoise tries from its pick at each depth: how often an exact pick stays exact, and how often a wrong one
    becomes exact."""
    import torch  # noqa: F401

    from benchmarks.sampler_sweep import hard_tuning_prompts
    from flowscale_ray.core.dynamics import SamplerSpec
    from flowscale_ray.models import build_model
    from flowscale_ray.rewards import build_reward
    from flowscale_ray.search import METHODS
    from flowscale_ray.search.base import SearchMethod
    from flowscale_ray.search.local import renoise_try
    from flowscale_ray.search.protocol import Batch, SearchOutcome

    @dataclass(frozen=True)
    class Config:
        tries: int = args.tries

    class Tries(SearchMethod):
        name = "renoise_tries"

        def __init__(self) -> None:
            super().__init__(Config())
            self.out: dict[str, Any] = {}

        def planned_nfe(self, ctx):
            return 0

        def search(self, ctx, seed):
            inner = METHODS["vt"](METHODS["vt"].Config(n_chains=8, chain_nfe=0)).with_budget(200, ctx)
            pick = yield from inner.search(ctx, seed)
            pids = iter(range(10**6, 10**7))
            tries = [
                (d, renoise_try(next(pids), pick.best, ctx.grid, d, 1000 * d + t))
                for d in RENOISE_DEPTHS
                for t in range(args.tries)
            ]
            ev = yield Batch(expands=tuple(e for _, e in tries))
            self.out = {
                "start": pick.reward,
                **{str(d): [ev[e.pid].reward for dd, e in tries if dd == d] for d in RENOISE_DEPTHS},
            }
            return SearchOutcome(
                best=pick.best, reward=pick.reward, nfe=0, records=list(pick.records), selected=[pick.best]
            )

    model, reward = build_model("shapes"), build_reward("counting")
    spec = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=8, grid="uniform")
    path = CACHE / "counting_renoise.jsonl"
    CACHE.mkdir(exist_ok=True)
    done = _done(path, "i")
    for i, text in enumerate(hard_tuning_prompts(args.prompts)):
        if i in done:
            continue
        m = Tries()
        _run(model, spec, reward, m, f"hard-{i:03d}", text)
        with path.open("a") as f:
            f.write(json.dumps({"i": i, **m.out}) + "\n")
        print(f"prompt {i}: start {m.out['start']}", flush=True)
    recs = [r for r in _rows(path) if r["i"] < args.prompts]
    md = [
        f"vt (8 chains, 200 NFE) on {len(recs)} hard tuning prompts (seed {SEED}), then {args.tries} tries per depth "
        "from its pick: renoise back `depth` grid steps (forward kernel) and denoise again on the VP-SDE (g = 8 s^2). "
        "Share of tries (mean over prompts) that are exact, and that score the same as the pick.",
        "",
        "| pick | prompts | " + " | ".join(f"depth {d}: exact / same" for d in RENOISE_DEPTHS) + " |",
        "|---|---|" + "---|" * len(RENOISE_DEPTHS),
    ]
    for label, keep in (("exact", lambda r: r["start"] == 0), ("wrong", lambda r: r["start"] < 0)):
        rs = [r for r in recs if keep(r)]
        if not rs:
            continue
        cells = []
        for d in RENOISE_DEPTHS:
            exact = np.mean([np.mean(np.asarray(r[str(d)]) == 0) for r in rs])
            same = np.mean([np.mean(np.asarray(r[str(d)]) == r["start"]) for r in rs])
            cells.append(f"{exact:.3f} / {same:.3f}")
        md.append(f"| {label} | {len(rs)} | " + " | ".join(cells) + " |")
    save("counting_probes_renoise", {"records": recs}, "\n".join(md))


NOISE_NORMS = (4.0, 8.0, 10.0, 12.0, 16.0)


def noise_edge(args) -> None:
    """Best-of-N samples on the VP-SDE (10 uniform steps) at several g = norm s^2: where does the sampler break?"""
    import torch

    from benchmarks.common import run_counting
    from benchmarks.sampler_sweep import tuning_prompts
    from flowscale_ray.core.dynamics import SamplerSpec, gaussian_overshoot
    from flowscale_ray.models import build_model
    from flowscale_ray.prompts import Prompt
    from flowscale_ray.rewards import build_reward

    model, reward = build_model("shapes"), build_reward("counting")
    tasks = [(Prompt(f"tune-{i:03d}", t), SEED) for i, t in enumerate(tuning_prompts(args.prompts))]
    rows = []
    for norm in NOISE_NORMS:
        spec = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=norm, grid="uniform")
        results, _ = run_counting(model, spec, reward, None, "base", {}, tasks)
        images = torch.stack([r.image for r in results]).float()
        rewards = [r.reward for r in results]
        exact = float(np.mean([r == 0 for r in rewards]))
        overshoot, _, final_var = gaussian_overshoot(spec)
        rows.append(
            {
                "norm": norm, "exact": exact, "reward": float(np.mean(rewards)), "mean_pixel": images.mean().item(),
                "gaussian_overshoot": overshoot, "gaussian_final_var": final_var,
            }
        )  # fmt: skip
        print(rows[-1], flush=True)
    md = [
        f"One sample per tuning prompt ({args.prompts} prompts, seed {SEED}) on the VP-SDE, 10 uniform steps, "
        "g = norm s^2: share exact, mean reward (-RSS), mean pixel value (a black background with a few shapes keeps "
        "it low; a saturated image raises it). Beside them, the same sampler on Gaussian data (x0 ~ N(0, 0.25)) with "
        "the exact velocity (closed form, `core.dynamics.gaussian_overshoot`): the largest factor by which an "
        "intermediate state's variance misses the true marginal's, and the final variance (0.25 when exact).",
        "",
        "| norm | exact | reward | mean pixel | Gaussian: worst variance factor | Gaussian: final variance |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['norm']:g} | {r['exact']:.3f} | {r['reward']:.2f} | {r['mean_pixel']:.3f} | "
        f"{r['gaussian_overshoot']:.3g} | {r['gaussian_final_var']:.3g} |"
        for r in rows
    ]
    save("counting_probes_noise_edge", {"rows": rows}, "\n".join(md))


def lookahead(args) -> None:
    model, both, SamplerSpec, presets, tuning_prompts = _setup()
    spec = SamplerSpec(**presets["linear-ode"])
    path = CACHE / "counting_lookahead.jsonl"
    CACHE.mkdir(exist_ok=True)
    done = _done(path, "id")
    for i, text in enumerate(tuning_prompts(args.prompts)):
        pid = f"tune-{i:03d}"
        if pid in done:
            continue
        started = time.perf_counter()
        m = _lookahead_method(args.trajectories)
        _run(model, spec, both, m, pid, text)
        with path.open("a") as f:
            f.write(json.dumps({"id": pid, **m.out}) + "\n")
        print(f"{pid}: {time.perf_counter() - started:.0f}s", flush=True)
    rows = [r for r in _rows(path) if int(r["id"][5:]) < args.prompts]
    table = []
    for k in range(len(rows[0]["x0"]) - 1):
        entry: dict[str, Any] = {"step": k}
        for name, get in [("x0_hat", lambda r, k=k: r["x0"][k])] + [
            (f"rollout_{j}", lambda r, k=k, j=j: r["looks"][str(j)][k]) for j in LOOK_STEPS
        ]:
            entry[name] = float(np.nanmean([_corr(get(r), r["x0"][-1]) for r in rows]))
        table.append(entry)
    md = [
        f"Counting task, {len(rows)} tuning prompts (seed {SEED}), {len(rows[0]['x0'][0])} linear-ODE trajectories "
        "each, 10 steps. Correlation over a prompt's trajectories (mean over prompts) between the final reward and "
        "an estimate at step k: the one-step x0 estimate (free), or the x0 estimate after rolling out to s = 0 in "
        "2 or 3 equal Euler steps (1 or 2 NFE more). At step 9 the final sample is the x0 estimate itself.",
        "",
        "| step k | " + " | ".join(str(r["step"]) for r in table) + " |",
        "|---" * (len(table) + 1) + "|",
    ]
    for name, label in [("x0_hat", "x0 estimate")] + [(f"rollout_{j}", f"roll-out, {j} steps") for j in LOOK_STEPS]:
        md.append(f"| {label} | " + " | ".join(f"{r[name]:.2f}" for r in table) + " |")
    save("counting_probes_lookahead", {"prompts": len(rows), "rows": table}, "\n".join(md))


# -- coarse previews ----------------------------------------------------------------------------------------------


def coarse(args) -> None:
    from benchmarks.counting_adaptive import _Tracer

    model, both, SamplerSpec, presets, tuning_prompts = _setup()
    path = CACHE / "counting_coarse.jsonl"
    CACHE.mkdir(exist_ok=True)
    done = {(r["steps"], r["i"]) for r in _rows(path)} if path.exists() else set()
    texts = tuning_prompts(args.prompts)
    for steps in (10, *COARSE_STEPS):
        spec = SamplerSpec(**presets["linear-ode"], steps=steps)
        for i, text in enumerate(texts):
            if (steps, i) in done:
                continue
            tr = _Tracer(args.trajectories, both, (steps,))
            _run(model, spec, both, tr, f"tune-{i:03d}", text)
            with path.open("a") as f:
                f.write(json.dumps({"steps": steps, "i": i, "final": tr.out["rewards"][-1]}) + "\n")
            print(f"{steps} steps, prompt {i}", flush=True)
    by: dict[int, dict[int, np.ndarray]] = {}
    for r in _rows(path):
        if r["i"] < args.prompts:
            by.setdefault(r["steps"], {})[r["i"]] = np.asarray(r["final"])
    fine, ids = by[10], sorted(by[10])
    n = len(fine[ids[0]])
    rng = np.random.default_rng(0)

    def bon(budget: int, reps: int = 300) -> float:
        m = budget // 10
        return float(
            np.mean([np.mean([fine[i][rng.choice(n, m, replace=False)].max() == 0 for _ in range(reps)]) for i in ids])
        )

    def c2f(k: int, many: int, few: int, reps: int = 150) -> float:
        out = []
        for i in ids:
            c, f, hits = by[k][i], fine[i], []
            for _ in range(reps):
                idx = rng.choice(n, many, replace=False)
                top = idx[np.lexsort((rng.random(many), -c[idx]))][:few]  # best previews, ties at random
                hits.append(f[top].max() == 0)
            out.append(np.mean(hits))
        return float(np.mean(out))

    steps_rows = []
    for k in COARSE_STEPS:
        ok = np.concatenate([fine[i][by[k][i] == 0] == 0 for i in ids])
        steps_rows.append({
            "steps": k, "single_accuracy": float(np.mean([np.mean(by[k][i] == 0) for i in ids])),
            "p_full_right_if_preview_right": float(ok.mean()) if len(ok) else float("nan"),
        })  # fmt: skip
    budget_rows = []
    for budget in (50, 100, 300):
        best = (-1.0, 0, 0, 0)
        for k in COARSE_STEPS:
            for few in range(1, budget // 10 + 1):
                many = (budget - 10 * few) // k
                if few <= many <= n:
                    best = max(best, (c2f(k, many, few), k, many, few))
        budget_rows.append({"budget": budget, "bon": bon(budget), "coarse_to_fine": best[0], "preview_steps": best[1],
                            "previews": best[2], "finished": best[3]})  # fmt: skip
    md = [
        f"Counting task, {len(ids)} tuning prompts (seed {SEED}), {n} noises each, linear ODE: every noise sampled "
        f"with 10 steps and with {', '.join(map(str, COARSE_STEPS))} steps. Single-sample exact-count accuracy "
        f"with 10 steps: {np.mean([np.mean(fine[i] == 0) for i in ids]):.3f}.",
        "",
        "| preview steps | single-sample accuracy | P(10-step right given preview right) |",
        "|---|---|---|",
        *(
            f"| {r['steps']} | {r['single_accuracy']:.3f} | {r['p_full_right_if_preview_right']:.3f} |"
            for r in steps_rows
        ),
        "",
        "Coarse-to-fine Best-of-N (preview many noises, finish the best few with 10 steps from the same noise; the "
        "best split of each budget, chosen with hindsight) against Best-of-N, by resampling the recorded noises:",
        "",
        "| NFE | Best-of-N | coarse-to-fine (best split) | split: preview steps x previews + finished |",
        "|---|---|---|---|",
        *(
            f"| {r['budget']} | {r['bon']:.3f} | {r['coarse_to_fine']:.3f} | {r['preview_steps']} x {r['previews']} "
            f"+ {r['finished']} |"
            for r in budget_rows
        ),
    ]
    save("counting_probes_coarse", {"steps": steps_rows, "budgets": budget_rows}, "\n".join(md))


# -- method grids (SMC's start, vt's threshold) ------------------------------------------------------

SMC_GRID: list[tuple[str, dict[str, Any], str]] = [
    ("bon", {}, "ode"),
    ("rbf", {"n_chains": 8}, "vp"),
    ("smc", {}, "vp"),
    ("smc", {"start": 0.5}, "vp"),
    ("smc", {"start": 0.7}, "vp"),
    ("smc", {"temperature": 1.0}, "vp"),
    ("smc", {"start": 0.5, "temperature": 1.0}, "vp"),
    ("smc", {"start": 0.7, "temperature": 1.0}, "vp"),
]

# vt with an absolute threshold at the reward's maximum (0: the x0 estimate has exactly the asked counts): a chain
# advances as soon as its estimate is right; early on that is noise and costs one candidate, so the quota goes on
# to the later intervals, where the estimate is informative (`rollover: spread`).
VT_GRID: list[tuple[str, dict[str, Any], str]] = [
    ("bon", {}, "ode"),
    ("vt", {"n_chains": 8, "chain_nfe": 0}, "vp"),
    ("vt", {"n_chains": 8, "chain_nfe": 0, "threshold": 0.0}, "vp"),
    ("vt", {"n_chains": 16, "chain_nfe": 0, "threshold": 0.0}, "vp"),
    ("vt", {"n_chains": 4, "chain_nfe": 0, "threshold": 0.0}, "vp"),
    ("vt", {"n_chains": 4, "chain_nfe": 0}, "vp"),
    ("vt", {"n_chains": 2, "chain_nfe": 0, "threshold": 0.0}, "vp"),
    # abf's `quota_power` (candidates late, where the x0 estimate starts to predict the count), with 4 chains
    ("abf", {"n_chains": 4, "chain_nfe": 0}, "vp"),
    ("abf", {"n_chains": 4, "chain_nfe": 0, "quota_power": 2.0}, "vp"),
    ("abf", {"n_chains": 4, "chain_nfe": 0, "quota_power": 2.0, "explore": 0.0}, "vp"),
    ("vt", {"n_chains": 8, "chain_nfe": 25}, "vp"),
]
# On the hard tuning prompts (`sampler_sweep.hard_tuning_prompts`), at 300 NFE: what would bring a search to
# Best-of-N@1000's accuracy with 30% of its NFE. Chains, the relative threshold, seed search and the sampler's noise.
HARD_GRID: list[tuple[str, dict[str, Any], str]] = [
    ("bon", {}, "ode"),
    ("vt", {"n_chains": 8, "chain_nfe": 0}, "vp"),  # the counting recommendation at 300 NFE
    ("vt", {"n_chains": 4, "chain_nfe": 0}, "vp"),
    ("vt", {"n_chains": 16, "chain_nfe": 0}, "vp"),
    ("rbf", {"n_chains": 8}, "vp"),
    ("abf", {"n_chains": 8, "chain_nfe": 0}, "vp"),
    ("vt", {"n_chains": 8, "chain_nfe": 0, "quantile": 0.5}, "vp"),
    ("vt", {"n_chains": 8, "chain_nfe": 0, "calibrate": 0.5}, "vp"),
    ("vt", {"n_chains": 8, "chain_nfe": 0, "seed_candidates": 4}, "vp"),
    ("vt", {"n_chains": 8, "chain_nfe": 0}, "vp4"),
    ("vt", {"n_chains": 8, "chain_nfe": 0}, "vp16"),
    ("vt", {"n_chains": 12, "chain_nfe": 0}, "vp"),
]
GRIDS = {"smc": SMC_GRID, "vt": VT_GRID, "hard": HARD_GRID}


def method_grid(args) -> None:
    """One search per tuning prompt for each (method, settings) of the grid named by the subcommand."""
    import torch  # noqa: F401

    from benchmarks.common import run_counting
    from benchmarks.sampler_sweep import hard_tuning_prompts, tuning_prompts
    from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
    from flowscale_ray.models import build_model
    from flowscale_ray.prompts import Prompt
    from flowscale_ray.rewards import build_reward
    from flowscale_ray.search import METHODS
    from flowscale_ray.search.protocol import SearchContext

    model, reward = build_model("shapes"), build_reward("counting")
    samplers = {
        "vp": SamplerSpec(interpolant="vp", sde=True, diffusion_norm=8, grid="uniform"),  # RBF's tuned sampler
        "vp4": SamplerSpec(interpolant="vp", sde=True, diffusion_norm=4, grid="uniform"),
        "vp16": SamplerSpec(interpolant="vp", sde=True, diffusion_norm=16, grid="uniform"),
        "ode": SamplerSpec(**SAMPLER_PRESETS["linear-ode"]),
    }
    hard = args.cmd == "hard"
    texts = hard_tuning_prompts(args.prompts) if hard else tuning_prompts(args.prompts)
    tasks = [(Prompt(f"{'hard' if hard else 'tune'}-{i:03d}", t), SEED) for i, t in enumerate(texts)]
    grid = GRIDS[args.cmd]
    path = CACHE / f"counting_{args.cmd}_tune.jsonl"
    CACHE.mkdir(exist_ok=True)
    done = (
        {(r["name"], json.dumps(r["settings"], sort_keys=True), r["sampler"], r["budget"]) for r in _rows(path)}
        if path.exists()
        else set()
    )
    for budget in args.budgets:
        for index, (name, settings, sampler) in enumerate(grid):
            if args.only and index not in args.only:
                continue
            if (name, json.dumps(settings, sort_keys=True), sampler, budget) in done:
                continue
            spec = samplers[sampler]
            m = METHODS[name](METHODS[name].Config(**settings)).with_budget(budget, SearchContext(spec.grid_times()))
            plain = {k: v for k, v in m.settings().items() if k != "name"}
            started = time.perf_counter()
            results, acc = run_counting(model, spec, reward, None, name, plain, tasks)
            row = {
                "name": name, "settings": settings, "budget": budget, "sampler": sampler,
                "accuracy": acc.float().tolist(), "reward": [r.reward for r in results],
                "nfe": float(np.mean([r.nfe for r in results])),
                "verifier_calls": float(np.mean([r.verifier_calls for r in results])),
            }  # fmt: skip
            with path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{name} {settings} {budget}: {np.mean(row['accuracy']):.3f} ({time.perf_counter() - started:.0f}s)")
    rows = [r for r in _rows(path) if len(r["accuracy"]) == args.prompts]
    bon = {r["budget"]: np.asarray(r["accuracy"]) for r in rows if r["name"] == "bon"}

    def paired(acc: np.ndarray, budget: int) -> str:
        if budget not in bon:
            return "—"
        d = acc - bon[budget]
        return f"{d.mean():+.3f} ± {d.std(ddof=1) / math.sqrt(len(d)):.3f}"

    kind = "hard tuning prompts (two groups, different colours and shapes, 7-8 objects)" if hard else "tuning prompts"
    md = [
        f"Counting task, {args.prompts} {kind}, seed {SEED} (one search each): exact-count accuracy ± s.e. over "
        "prompts, paired differences against Best-of-N at the same budget and at 1000 NFE, mean reward (-RSS). bon "
        "on the linear ODE; the others on the VP-SDE with a uniform grid, g = 8 s^2 (vp, RBF's tuned sampler), 4 s^2 "
        "(vp4) or 16 s^2 (vp16).",
        "",
        "| method | settings | sampler | NFE budget | NFE | verifier calls | accuracy | vs bon | vs bon@1000 "
        "| reward |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["budget"], r["name"] != "bon", r["name"] != "rbf")):
        acc = np.asarray(r["accuracy"])
        se = acc.std(ddof=1) / math.sqrt(len(acc))
        vs = "—" if r["name"] == "bon" else paired(acc, r["budget"])
        vs1000 = "—" if r["budget"] >= 1000 else paired(acc, 1000)
        reward = f"{np.mean(r['reward']):.3f}" if "reward" in r else "—"
        md.append(
            f"| {r['name']} | {json.dumps(r['settings'])} | {r['sampler']} | {r['budget']} | {r['nfe']:.0f} | "
            f"{r['verifier_calls']:.0f} | {acc.mean():.3f} ± {se:.3f} | {vs} | {vs1000} | {reward} |"
        )
    save(f"counting_probes_{args.cmd}", {"rows": rows}, "\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    lo = sub.add_parser("lookahead")
    lo.add_argument("--prompts", type=int, default=10)
    lo.add_argument("--trajectories", type=int, default=64)
    co = sub.add_parser("coarse")
    co.add_argument("--prompts", type=int, default=16)
    co.add_argument("--trajectories", type=int, default=64)
    sm = sub.add_parser("smc")
    sm.add_argument("--prompts", type=int, default=22)
    sm.add_argument("--budgets", type=int, nargs="+", default=[100])
    sm.add_argument("--only", type=int, nargs="*", default=[], help="grid entries (0-based) to run; default all")
    vt = sub.add_parser("vt")
    vt.add_argument("--prompts", type=int, default=64)
    vt.add_argument("--budgets", type=int, nargs="+", default=[100, 300])
    vt.add_argument("--only", type=int, nargs="*", default=[], help="grid entries (0-based) to run; default all")
    rn = sub.add_parser("renoise")
    rn.add_argument("--prompts", type=int, default=24)
    rn.add_argument("--tries", type=int, default=24)
    ne = sub.add_parser("noise-edge")
    ne.add_argument("--prompts", type=int, default=64)
    po = sub.add_parser("polish")
    po.add_argument("--prompts", type=int, default=60)
    po.add_argument("--budgets", type=int, nargs="+", default=[300])
    po.add_argument("--only", type=int, nargs="*", default=[], help="grid entries (0-based) to run; default all")
    po.add_argument("--dry", action="store_true", help="do not record (a quick check on fewer prompts)")
    hd = sub.add_parser("hard")
    hd.add_argument("--prompts", type=int, default=60)
    hd.add_argument("--budgets", type=int, nargs="+", default=[300])
    hd.add_argument("--only", type=int, nargs="*", default=[], help="grid entries (0-based) to run; default all")
    args = p.parse_args()
    grids = dict.fromkeys(GRIDS, method_grid)
    commands = {
        "lookahead": lookahead,
        "coarse": coarse,
        "polish": polish,
        "renoise": renoise,
        "noise-edge": noise_edge,
    }
    {**commands, **grids}[args.cmd](args)


if __name__ == "__main__":
    main()
