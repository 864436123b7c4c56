"""Verifier cascades on the built-in counting task: how much of the expensive verifier's quality a cascade keeps,
for what share of its calls.

Both counters of the built-in task serve as stages, in both orders:
  A: cheap = the CNN counter (`counting_heldout`, probability that every count is exact), expensive = the pixel
     counter (`counting`); quality = exact-count accuracy (every count right, by the pixel counter).
  B: cheap = the pixel counter, expensive = the CNN counter; quality = the CNN's probability (its own score).
Search: Best-of-16 with the tuned VP-SDE (vp, diffusion norm 8, uniform grid, 10 steps; 160 NFE per prompt).

Best-of-N's candidates do not depend on the reward (the same seeds give the same 16 candidates whatever scores
them), so each prompt's candidates are generated once, by a real Best-of-16 run, and every configuration (each
stage alone, cascades with a top fraction or a threshold) is a real `Cascade` scoring those candidates; the
configuration's choice is the argmax, which is what Best-of-N keeps (its final sample under `final_step: denoise` is
the scored candidate). A check reruns the chosen cascades as the search's reward through the executor on a few
prompts and compares the selected samples.

Choices (the fraction and threshold recommended for each order) are made on tuning prompts
(`benchmarks.sampler_sweep.tuning_prompts`): the configuration with the fewest expensive calls whose quality is
within one paired standard error of the expensive stage alone. Evaluation prompts only report.

    .venv/bin/python -m benchmarks.cascade_study [--tune-prompts 24] [--eval-prompts 50] [--check 6]

Writes benchmarks/results/cascade_tune.{json,md} and cascade_eval.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.common import mean_se, save
from flowscale_ray.builtin import counting, shapes
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import Reward, build_reward
from flowscale_ray.rewards.cascade import Cascade
from flowscale_ray.search import METHODS

N = 16
SPEC = SamplerSpec(interpolant="vp", sde=True, diffusion_norm=8, grid="uniform")
ORDERS = {
    "A": {"cheap": "counting_heldout", "expensive": "counting", "quality": "accuracy"},
    "B": {"cheap": "counting", "expensive": "counting_heldout", "quality": "cnn_prob"},
}
FRACTIONS = [0.5, 0.25, 0.125]
THRESHOLDS = {"A": [0.05, 0.2, 0.5], "B": [0.0, -1.0, -2.0]}  # on the cheap stage's scale
FLOOR = {"A": -1e6, "B": 0.0}  # the lowest expensive score: the CNN's probability is >= 0


class Recorder(Reward):
    """The pixel counter, keeping each prompt's scored candidates (Best-of-N scores them in one call)."""

    name = "counting"

    def __init__(self) -> None:
        self.inner = build_reward("counting")
        self.candidates: dict[str, torch.Tensor] = {}

    def __call__(self, samples, prompts):
        if samples.shape[0] == N:
            self.candidates[prompts[0].id] = samples.clone()
        return self.inner(samples, prompts)


def candidates(model, tasks: list[tuple[Prompt, int]]) -> dict[str, torch.Tensor]:
    rec = Recorder()
    method = METHODS["bon"](METHODS["bon"].Config(n=N))
    ex = InProcessExecutor(ParticleEngine(model, SPEC), rec, in_flight=len(tasks))
    for _ in ex.run([SearchTask(p, method, seed) for p, seed in tasks]):
        pass
    assert set(rec.candidates) == {p.id for p, _ in tasks}
    return rec.candidates


def configurations(order: str) -> list[tuple[str, dict[str, Any] | None, str | None]]:
    """(label, cascade options or None, single reward name or None)."""
    o = ORDERS[order]
    out: list[tuple[str, dict[str, Any] | None, str | None]] = [
        ("expensive alone", None, o["expensive"]),
        ("cheap alone", None, o["cheap"]),
    ]
    out += [(f"top {f:g}", {"top_fraction": f}, None) for f in FRACTIONS]
    out += [(f"cheap >= {t:g}", {"threshold": t}, None) for t in THRESHOLDS[order]]
    return out


def cascade(order: str, options: dict[str, Any]) -> Cascade:
    o = ORDERS[order]
    return Cascade({"name": o["cheap"]}, {"name": o["expensive"]}, floor=FLOOR[order], **options)


def evaluate(order: str, cands: dict[str, torch.Tensor], prompts: dict[str, Prompt]) -> list[dict[str, Any]]:
    cnn, pixel = build_reward("counting_heldout"), build_reward("counting")
    ids = sorted(cands)
    expensive = build_reward(ORDERS[order]["expensive"])
    exp_scores = {i: expensive(cands[i], [prompts[i]] * N) for i in ids}
    rows, reference = [], None
    for label, options, single in configurations(order):
        scorer: Reward = build_reward(single) if single else cascade(order, options or {})
        started = time.perf_counter()
        choice = {i: int(torch.argmax(scorer(cands[i], [prompts[i]] * N))) for i in ids}
        seconds = time.perf_counter() - started
        images = torch.stack([cands[i][choice[i]] for i in ids])
        plist = [prompts[i] for i in ids]
        acc = counting.accuracy(images, plist).double().tolist()
        prob = cnn(images, plist).tolist()
        quality = acc if ORDERS[order]["quality"] == "accuracy" else prob
        if isinstance(scorer, Cascade):
            calls = scorer.calls["expensive"] / len(ids)
        else:
            calls = float(N) if single == ORDERS[order]["expensive"] else 0.0
        row: dict[str, Any] = {"order": order, "config": label, "options": options, "expensive_calls": calls}
        row["accuracy"], row["accuracy_se"] = mean_se(acc)
        row["cnn_prob"], row["cnn_prob_se"] = mean_se(prob)
        row["counting_reward"] = mean_se(pixel(images, plist).tolist())[0]
        # The choice reaches the expensive stage's best score (ties are common: many candidates count exactly).
        row["reaches_expensive_best"] = sum(bool(exp_scores[i][choice[i]] == exp_scores[i].max()) for i in ids) / len(
            ids
        )
        row["scoring_seconds_per_prompt"] = seconds / len(ids)
        if reference is None:
            reference = quality
        diff = [q - r for q, r in zip(quality, reference, strict=True)]
        row["quality"] = ORDERS[order]["quality"]
        row["vs_expensive"], row["vs_expensive_se"] = mean_se(diff)
        rows.append(row)
        print(
            f"{order} {label:16} expensive calls {calls:5.2f}/prompt  acc {row['accuracy']:.3f}  cnn "
            f"{row['cnn_prob']:.3f}  vs expensive {row['vs_expensive']:+.3f} +- {row['vs_expensive_se']:.3f}"
        )
    return rows


def choose(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per order and mode: the fewest expensive calls within one paired SE of the expensive stage alone."""
    out = {}
    for order in ORDERS:
        for mode in ("top_fraction", "threshold"):
            ok = [
                r
                for r in rows
                if r["order"] == order
                and r["options"]
                and mode in r["options"]
                and r["vs_expensive"] >= -max(r["vs_expensive_se"], 1e-12)
            ]
            if ok:
                best = min(ok, key=lambda r: (r["expensive_calls"], -r["vs_expensive"]))
                out[f"{order}/{mode}"] = best["options"]
    return out


def table(rows: list[dict[str, Any]], chosen: dict[str, dict[str, Any]] | None = None) -> str:
    lines = [
        "| order | configuration | expensive calls / prompt | accuracy | CNN prob | vs expensive alone (paired) "
        "| reaches the expensive best |",
        "|---|---|---|---|---|---|---|",
    ]
    picked = [(k.split("/")[0], v) for k, v in (chosen or {}).items()]
    for r in rows:
        mark = " (chosen)" if (r["order"], r["options"]) in picked else ""
        lines.append(
            f"| {r['order']} | {r['config']}{mark} | {r['expensive_calls']:.2f} | {r['accuracy']:.3f} ± "
            f"{r['accuracy_se']:.3f} | {r['cnn_prob']:.3f} ± {r['cnn_prob_se']:.3f} | {r['quality']} "
            f"{r['vs_expensive']:+.3f} ± {r['vs_expensive_se']:.3f} | {r['reaches_expensive_best']:.2f} |"
        )
    return "\n".join(lines)


def check(model, tasks, chosen, cands) -> list[dict[str, Any]]:
    """Rerun the chosen cascades as the search's reward (a real Best-of-16 through the executor) and compare the
    selected sample with the offline choice."""
    out = []
    method = METHODS["bon"](METHODS["bon"].Config(n=N))
    for key, options in chosen.items():
        order = key.split("/")[0]
        reward = cascade(order, options)
        ex = InProcessExecutor(ParticleEngine(model, SPEC), reward, in_flight=len(tasks))
        results = list(ex.run([SearchTask(p, method, seed) for p, seed in tasks]))
        same = 0
        for r in results:
            offline = cands[r.prompt.id][int(torch.argmax(cascade(order, options)(cands[r.prompt.id], [r.prompt] * N)))]
            same += int(torch.allclose(r.image, offline, atol=1e-6))
        out.append(
            {
                "cascade": key,
                "options": options,
                "prompts": len(results),
                "same_sample": same,
                "verifier_calls_per_prompt": sum(r.verifier_calls for r in results) / len(results),
                "expensive_calls_per_prompt": reward.calls["expensive"] / len(results),
            }
        )
        print(f"check {key}: {same}/{len(results)} prompts select the offline choice")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune-prompts", type=int, default=24)
    ap.add_argument("--eval-prompts", type=int, default=50)
    ap.add_argument("--check", type=int, default=6, help="evaluation prompts rerun through the executor")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from benchmarks.sampler_sweep import tuning_prompts

    model = build_model("shapes")
    started = time.perf_counter()
    tune_tasks = [(Prompt(f"t{i}", t), 0) for i, t in enumerate(tuning_prompts(args.tune_prompts))]
    cands = candidates(model, tune_tasks)
    prompts = {p.id: p for p, _ in tune_tasks}
    tune_rows = [row for order in ORDERS for row in evaluate(order, cands, prompts)]
    chosen = choose(tune_rows)
    setup = {"method": f"bon n={N}", "sampler": "vp-sde, diffusion_norm 8, uniform grid, 10 steps", "seed": 0}
    save(
        "cascade_tune",
        {"setup": setup, "prompts": args.tune_prompts, "rows": tune_rows, "chosen": chosen},
        f"# Cascade study: tuning ({args.tune_prompts} tuning prompts, seed 0)\n\n{table(tune_rows, chosen)}",
    )
    eval_texts = shapes.evaluation_prompts()[: args.eval_prompts]
    eval_tasks = [(Prompt(f"e{i:02d}", t), 0) for i, t in enumerate(eval_texts)]
    cands = candidates(model, eval_tasks)
    prompts = {p.id: p for p, _ in eval_tasks}
    eval_rows = [row for order in ORDERS for row in evaluate(order, cands, prompts)]
    checks = check(model, eval_tasks[: args.check], chosen, cands)
    seconds = time.perf_counter() - started
    md = (
        f"# Cascade study: evaluation ({args.eval_prompts} evaluation prompts, seed 0; Best-of-{N}, 160 NFE)\n\n"
        "A: cheap = CNN counter, expensive = pixel counter, quality = accuracy. B: cheap = pixel counter, "
        "expensive = CNN counter, quality = the CNN's probability. Mean ± standard error over prompts; differences "
        "paired by prompt against the expensive stage alone. Chosen on tuning prompts: "
        + ", ".join(f"{k} {v}" for k, v in chosen.items())
        + f"\n\n{table(eval_rows, chosen)}\n\nExecutor check (the chosen cascades as the search's reward): "
        + "; ".join(f"{c['cascade']}: {c['same_sample']}/{c['prompts']} same sample" for c in checks)
        + f"\n\nTotal {seconds:.0f} s."
    )
    save(
        "cascade_eval",
        {"setup": setup, "prompts": args.eval_prompts, "rows": eval_rows, "chosen": chosen, "checks": checks},
        md,
    )


if __name__ == "__main__":
    main()
