"""Text tables for people: a run's first results, and baselines side by side."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowscale_ray.execution import TaskResult
from flowscale_ray.rewards import Reward


def format_table(results: Sequence[TaskResult]) -> str:
    """Prompt, reward, held-out score (when there is one) and NFE of each result, then the mean reward."""
    held = any(r.held_out is not None for r in results)
    header = f"{'prompt':<40} {'reward':>9} " + (f"{'held-out':>9} " if held else "") + f"{'NFE':>6}"
    lines = [header, "-" * len(header)]
    for r in results:
        text = r.prompt.text if len(r.prompt.text) <= 40 else r.prompt.text[:37] + "..."
        row = f"{text:<40} {r.reward:>9.4f} "
        if held:
            row += f"{r.held_out:>9.4f} " if r.held_out is not None else f"{'-':>9} "
        lines.append(row + f"{r.nfe:>6d}")
    if results:
        mean = sum(r.reward for r in results) / len(results)
        lines.append(f"{'mean':<40} {mean:>9.4f}")
    return "\n".join(lines)


def comparison_table(names: list[str], previews: list[list[TaskResult]], reward: Reward) -> str:
    """Prompt by prompt: what each method produced (the reward's own description when it has one, e.g. the
    counts found), its reward, whether it is exact (when the reward defines accuracy) and its NFE."""
    by_method = [{res.prompt.id: res for res in preview} for preview in previews]
    ids = sorted(by_method[-1])
    describe: Any = getattr(reward, "describe", None)
    accuracy: Any = getattr(reward, "accuracy", None)
    rows = [["prompt", *[f"{n}: {'found' if describe else 'reward'}" for n in names]]]
    if describe:
        rows[0] += [f"{n}: reward" for n in names]
    if accuracy:
        rows[0] += [f"{n}: exact" for n in names]
    rows[0] += [f"{n}: NFE" for n in names]
    totals = {n: [0.0, 0.0] for n in names}
    for pid in ids:
        found = [m.get(pid) for m in by_method]
        results = [r for r in found if r is not None]
        if len(results) < len(found):
            continue
        prompt = results[-1].prompt
        row = [prompt.text]
        if describe:
            row += [describe(r.image[None], [prompt])[0] for r in results]
        row += [f"{r.reward:.3g}" for r in results]
        if accuracy:
            exact = [float(accuracy(r.image[None], [prompt])[0]) for r in results]
            row += ["yes" if e else "no" for e in exact]
            for n, e in zip(names, exact, strict=True):
                totals[n][1] += e
        row += [str(r.nfe) for r in results]
        for n, r in zip(names, results, strict=True):
            totals[n][0] += r.reward
        rows.append(row)
    n_rows = max(1, len(rows) - 1)
    summary = "; ".join(
        f"{n}: mean reward {t[0] / n_rows:.3g}" + (f", accuracy {t[1] / n_rows:.2f}" if accuracy else "")
        for n, t in totals.items()
    )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], summary])
