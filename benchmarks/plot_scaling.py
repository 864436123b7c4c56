"""One NFE-scaling plot of the counting task from the saved results (no new runs): Best-of-N with the linear ODE
against RBF with the VP-SDE at each stage of tuning (the paper's settings; the VP sampler tuned on tuning
prompts; then RBF's chains tuned too). All rows: the same 50 evaluation prompts, seed 0.

    .venv/bin/python -m benchmarks.plot_scaling

Reads benchmarks/results/counting_study, counting_vp_tuned[_scaling] and counting_rbf_tuned[_scaling] (.json);
writes benchmarks/results/counting_scaling.png.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.common import RESULTS


def rows(name: str) -> list[dict[str, Any]]:
    return json.loads((RESULTS / f"{name}.json").read_text())["rows"]


def curves() -> dict[str, list[tuple[float, float, float]]]:
    """label -> [(nfe, accuracy, accuracy standard error)] sorted by NFE."""
    study = rows("counting_study")
    out = {
        "BoN, linear ODE": [r for r in study if r.get("part") == "scaling" and r["method"] == "bon"],
        "RBF, VP-SDE (paper settings)": [r for r in study if r.get("part") == "scaling" and r["method"] == "rbf"],
        "RBF, VP-SDE tuned (uniform, g=8), 2 chains": [
            r for r in rows("counting_vp_tuned") + rows("counting_vp_tuned_scaling") if r["method"] == "rbf"
        ],
        "RBF, VP-SDE tuned, 8 chains": [
            r
            for r in rows("counting_rbf_tuned") + rows("counting_rbf_tuned_scaling")
            if r["sampler"] == "vp-sde" and r["method"] == "rbf"
        ],
    }
    return {k: sorted((r["nfe"], r["accuracy"], r["accuracy_se"]) for r in v) for k, v in out.items()}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, pts), style in zip(curves().items(), ("o-", "s:", "s--", "s-"), strict=True):
        ax.errorbar(
            [p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt=style, capsize=3, label=label
        )
    ax.set_xscale("log")
    ax.set_xlabel("NFE per prompt")
    ax.set_ylabel("exact-count accuracy (± s.e.)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Built-in counting task, 50 evaluation prompts")
    fig.tight_layout()
    path = RESULTS / "counting_scaling.png"
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
