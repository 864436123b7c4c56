"""`flowscale report URI`: a self-contained report of a run, with its `compare_with` baselines.

    flowscale report results/demo                       -> ./demo-report.html (PNGs embedded as base64)
    flowscale report results/demo --format md --out r.md -> r.md with r-*.png beside it

Three plots: best reward against NFE spent per method (from the step records of every prompt's search: the
running best reward after each decision, averaged over prompts, at the mean cumulative NFE); the distribution
of the final reward per method; each replica's utilization over time (busy seconds per interval, from the
run's `timeline.json`). Baselines are the sibling run folders `<run_id>-<method>` the job wrote beside the run.
Reads only committed shards, so a run in progress can be reported too.

A run under a dataset budget (`budget: {mode: dataset}`) also gets its allocation: prompts, NFE and rounds per
prompt by why each prompt stopped, and the budget left over time (from `timeline.json`).

Reward hacking: when a `base` run (plain sampling, e.g. from `compare_with: [{name: base}]`) sits beside searched
runs with a held-out score, the report lists, per searched method, the prompts whose given reward rose over the base
row of the same prompt (same prompt id and seed) while the held-out score fell.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import itertools
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("html", "md")
PLOTS = (
    ("reward-vs-nfe", "Best reward vs NFE per method"),
    ("reward-distribution", "Final reward distribution per method"),
    ("utilization", "Replica utilization over time"),
    ("budget", "Dataset budget left over time"),
)
COLUMNS = ["prompt_id", "status", "rank", "method", "reward", "nfe", "step_records"]
OPTIONAL_COLUMNS = ["rounds", "budget_stop", "held_out", "prompt"]  # read when the run has them
HACKING_SHOWN = 50  # flagged prompts listed per report (the largest held-out drops first)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="the run folder, e.g. results/demo or s3://bucket/prefix/demo")
    p.add_argument("--out", metavar="FILE", help="report path (default: ./<run_id>-report.html or .md)")
    p.add_argument("--format", choices=FORMATS, help="html (self-contained) or md (PNGs beside it); default from --out")
    p.add_argument("--job", metavar="JOB", help="take the storage settings (S3 endpoint, ...) from this job file")
    p.add_argument("--no-baselines", action="store_true", help="leave out sibling baseline runs <run_id>-<method>")


@dataclass
class RunData:
    uri: str
    run_id: str
    method: str
    summary: Any  # flowscale_ray.io.inspect.RunSummary
    rows: list[dict[str, Any]]  # ok rows of rank 0: one per prompt
    timeline: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)


def run(args: argparse.Namespace) -> int:
    from flowscale_ray.config import ConfigError, StorageConfig

    storage = StorageConfig()
    try:
        if args.job:
            from flowscale_ray.config import read_job_file

            storage = read_job_file(args.job).storage
        fmt = args.format or ("md" if args.out and args.out.lower().endswith(".md") else "html")
        runs = load_runs(args.uri, storage, baselines=not args.no_baselines)
        out = Path(args.out) if args.out else Path(f"{runs[-1].run_id}-report.{fmt}")
        write_report(runs, out, fmt)
    except ConfigError as exc:
        msg = str(exc)
        print(f"flowscale: error: report: {msg.removeprefix('inspect: ')}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"flowscale: error: report: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"report of {', '.join(r.run_id for r in runs)}: {out}")
    return 0


# -- reading ---------------------------------------------------------------------------------------------------------
def load_run(uri: str, storage: Any) -> RunData:
    import pyarrow.dataset as ds

    from flowscale_ray.io.inspect import summarize

    summary, fs, paths = summarize(uri, storage, top=0)
    rows = []
    if paths:
        dataset = ds.dataset(paths, filesystem=fs, format="parquet")
        present = set(dataset.schema.names)
        table = dataset.to_table(columns=COLUMNS + [c for c in OPTIONAL_COLUMNS if c in present])
        rows = [r for r in table.to_pylist() if r["status"] == "ok" and r["rank"] == 0]
    from flowscale_ray.io.storage import open_filesystem
    from flowscale_ray.io.writer import LAYOUT, find_layout

    fs, root = open_filesystem(uri, storage)
    timeline = None
    try:
        layout = find_layout(fs, root) or LAYOUT
        timeline = json.loads(fs.cat_file(f"{root.rstrip('/')}/{layout.doc('timeline.json')}"))
    except FileNotFoundError:
        pass
    except ValueError:
        timeline = None  # a damaged timeline only loses the utilization plot
    method = summary.config.get("method", {})
    name = rows[0]["method"] if rows else (method.get("name") if isinstance(method, dict) else None)
    return RunData(uri, summary.run_id, name or "?", summary, rows, timeline, summary.config)


def baseline_uris(uri: str, storage: Any, run_id: str) -> list[str]:
    """Sibling run folders `<run_id>-<method>` (what `compare_with` writes), sorted by name."""
    from flowscale_ray.io.storage import open_filesystem
    from flowscale_ray.io.writer import find_layout
    from flowscale_ray.search import METHODS

    fs, root = open_filesystem(uri, storage)
    root = root.rstrip("/")
    parent = root.rsplit("/", 1)[0] if "/" in root else "."
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(parent, detail=False)]
    except FileNotFoundError:
        return []
    prefix = uri.rstrip("/")[: len(uri.rstrip("/")) - len(root.rsplit("/", 1)[-1])]
    found = []
    for name in sorted(names):
        is_baseline = name.startswith(f"{run_id}-") and name[len(run_id) + 1 :] in METHODS
        if is_baseline and find_layout(fs, f"{parent}/{name}") is not None:
            found.append(prefix + name)
    return found


def load_runs(uri: str, storage: Any, baselines: bool = True) -> list[RunData]:
    """The run at `uri`, last, after its baselines."""
    main = load_run(uri, storage)
    others = [load_run(u, storage) for u in baseline_uris(uri, storage, main.run_id)] if baselines else []
    return [*others, main]


# -- plots -------------------------------------------------------------------------------------------------------------
def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def reward_curve(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(mean cumulative NFE, mean running-best reward) after each decision, over the prompts' step records."""
    curves = []
    for r in rows:
        records = r.get("step_records") or []
        nfe, best, xs, ys = 0, -math.inf, [], []
        for rec in records:
            nfe += rec["nfe"] or 0
            if rec["best_reward"] is not None and not math.isnan(rec["best_reward"]):
                best = max(best, rec["best_reward"])
            if math.isfinite(best):
                xs.append(nfe)
                ys.append(best)
        if xs:
            curves.append((xs, ys))
    if not curves:
        return [], []
    n = min(len(c[0]) for c in curves)
    return (
        [statistics.fmean(c[0][i] for c in curves) for i in range(n)],
        [statistics.fmean(c[1][i] for c in curves) for i in range(n)],
    )


def plot_reward_vs_nfe(runs: list[RunData]) -> bytes:
    plt, fig, ax = _figure()
    for i, run in enumerate(runs):
        color = f"C{i}"
        xs, ys = reward_curve(run.rows)
        if xs:
            ax.plot(xs, ys, "-o", color=color, markersize=3, label=f"{run.method}: search best")
        final = [(r["nfe"], r["reward"]) for r in run.rows if r["reward"] is not None and r["nfe"] is not None]
        if final:
            ax.scatter([f[0] for f in final], [f[1] for f in final], color=color, alpha=0.25, s=12)
            mx, my = statistics.fmean(f[0] for f in final), statistics.fmean(f[1] for f in final)
            ax.scatter([mx], [my], color=color, marker="*", s=160, edgecolor="black", label=f"{run.method}: final")
    ax.set_xlabel("NFE spent per prompt")
    ax.set_ylabel("reward")
    ax.set_title("Reward vs NFE (dots: prompts; star: mean final sample)")
    if ax.has_data():
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished prompts", ha="center", transform=ax.transAxes)
    return _png(plt, fig)


def plot_reward_distribution(runs: list[RunData]) -> bytes:
    plt, fig, ax = _figure()
    values = {r.method: [x["reward"] for x in r.rows if x["reward"] is not None] for r in runs}
    flat = [v for vs in values.values() for v in vs if math.isfinite(v)]
    if flat:
        lo, hi = min(flat), max(flat)
        bins = 20 if hi > lo else 1
        for i, (name, vs) in enumerate(values.items()):
            if vs:
                ax.hist(vs, bins=bins, range=(lo, hi if hi > lo else lo + 1), alpha=0.5, color=f"C{i}", label=name)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished prompts", ha="center", transform=ax.transAxes)
    ax.set_xlabel("reward of the final sample")
    ax.set_ylabel("prompts")
    ax.set_title("Reward distribution")
    return _png(plt, fig)


def utilization_series(timeline: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """replica -> (interval midpoints in seconds, busy fraction over each interval)."""
    samples = timeline.get("samples") or []
    out: dict[str, tuple[list[float], list[float]]] = {}
    for replica in timeline.get("replicas") or []:
        xs, ys = [], []
        for a, b in itertools.pairwise(samples):
            dt = b["t"] - a["t"]
            if dt <= 0:
                continue
            busy = b["busy"].get(replica, 0.0) - a["busy"].get(replica, 0.0)
            xs.append((a["t"] + b["t"]) / 2)
            ys.append(min(1.0, max(0.0, busy / dt)))
        out[replica] = (xs, ys)
    return out


def plot_utilization(runs: list[RunData]) -> bytes:
    plt, fig, ax = _figure()
    run = runs[-1]
    series = utilization_series(run.timeline) if run.timeline else {}
    drawn = False
    for i, (replica, (xs, ys)) in enumerate(series.items()):
        if xs:
            ax.step(xs, ys, where="mid", color=f"C{i}", label=f"replica {replica}")
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
        ax.set_ylim(0, 1.05)
    else:
        ax.text(0.5, 0.5, "no timeline.json recorded for this run", ha="center", transform=ax.transAxes)
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("busy fraction")
    ax.set_title(f"Replica utilization ({run.run_id})")
    return _png(plt, fig)


def budget_series(timeline: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(seconds, dataset-budget NFE not yet charged to a round) over the run; empty without a dataset budget."""
    points = [(s["t"], s["budget_nfe"] - s["budget_spent"]) for s in timeline.get("samples") or [] if "budget_nfe" in s]
    return [t for t, _ in points], [float(v) for _, v in points]


def plot_budget(run: RunData) -> bytes:
    plt, fig, ax = _figure()
    xs, ys = budget_series(run.timeline or {})
    ax.step(xs, ys, where="post")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("NFE left in the blocks started")
    ax.set_title(f"Dataset budget left ({run.run_id})")
    return _png(plt, fig)


def allocation_rows(run: RunData) -> list[list[str]]:
    """Under a dataset budget: per reason a prompt stopped, its prompts, mean NFE, mean rounds and mean reward."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in run.rows:
        if r.get("budget_stop"):
            groups.setdefault(r["budget_stop"], []).append(r)
    if not groups:
        return []
    table = [["stopped because", "prompts", "mean NFE", "max NFE", "mean rounds", "mean reward"]]
    for reason, rows in sorted(groups.items()):
        table.append(
            [
                reason,
                str(len(rows)),
                f"{statistics.fmean(r['nfe'] for r in rows):.1f}",
                str(max(r["nfe"] for r in rows)),
                f"{statistics.fmean(r['rounds'] for r in rows):.2f}",
                f"{statistics.fmean(r['reward'] for r in rows):.4g}",
            ]
        )
    return table


def render_plots(runs: list[RunData]) -> dict[str, bytes]:
    plots = {
        "reward-vs-nfe": plot_reward_vs_nfe(runs),
        "reward-distribution": plot_reward_distribution(runs),
        "utilization": plot_utilization(runs),
    }
    if runs[-1].timeline and budget_series(runs[-1].timeline)[0]:
        plots["budget"] = plot_budget(runs[-1])
    return plots


# -- reward hacking ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HackingFlag:
    """A prompt whose given reward rose under search over the base row while its held-out score fell."""

    method: str
    prompt_id: str
    prompt: str
    base_reward: float
    reward: float
    base_held_out: float
    held_out: float


def _finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def reward_hacking(runs: list[RunData]) -> dict[str, tuple[int, list[HackingFlag]]] | None:
    """Per searched method: (prompts compared with the base run, flagged prompts, largest held-out drop first).

    None when no run is plain sampling (`base`) or no row has a held-out score. Prompts are paired by prompt id;
    a prompt without a finite reward and held-out score in both rows is not compared."""
    base = next((r for r in runs if r.method == "base"), None)
    if base is None or not any(_finite(r.get("held_out")) for run in runs for r in run.rows):
        return None
    by_id = {r["prompt_id"]: r for r in base.rows}
    out: dict[str, tuple[int, list[HackingFlag]]] = {}
    for run in runs:
        if run is base:
            continue
        compared, flags = 0, []
        for row in run.rows:
            b = by_id.get(row["prompt_id"])
            if b is None or not _finite(row["reward"], row.get("held_out"), b["reward"], b.get("held_out")):
                continue
            compared += 1
            if row["reward"] > b["reward"] and row["held_out"] < b["held_out"]:
                text = row.get("prompt") or ""
                flags.append(
                    HackingFlag(
                        run.method, row["prompt_id"], text, b["reward"], row["reward"], b["held_out"], row["held_out"]
                    )
                )
        flags.sort(key=lambda f: (f.held_out - f.base_held_out, f.prompt_id))
        out[run.method] = (compared, flags)
    return out


def hacking_lines(runs: list[RunData]) -> tuple[list[str], list[list[str]]]:
    """(one summary line per searched method, table rows with a header) for the reward-hacking section."""
    found = reward_hacking(runs)
    if found is None:
        return [], []
    summary = [
        f"{method}: {len(flags)} of {compared} prompts (given reward up, held-out down vs base)"
        for method, (compared, flags) in found.items()
    ]
    table = [["method", "prompt id", "prompt", "reward: base -> search", "held-out: base -> search"]]
    flags = sorted(
        (f for _, fs in found.values() for f in fs), key=lambda f: (f.held_out - f.base_held_out, f.prompt_id)
    )
    for f in flags[:HACKING_SHOWN]:
        table.append(
            [
                f.method,
                f.prompt_id,
                f.prompt,
                f"{f.base_reward:.4g} -> {f.reward:.4g} (+{f.reward - f.base_reward:.3g})",
                f"{f.base_held_out:.4g} -> {f.held_out:.4g} ({f.held_out - f.base_held_out:.3g})",
            ]
        )
    if len(flags) > HACKING_SHOWN:
        summary.append(f"(the {HACKING_SHOWN} largest held-out drops of {len(flags)} are listed)")
    return summary, table


# -- documents -----------------------------------------------------------------------------------------------------
def summary_rows(runs: list[RunData]) -> list[list[str]]:
    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    head = ["run", "method", "state", "prompts", "rows", "failed", "mean reward", "NFE/prompt", "mean utilization"]
    rows = [head]
    for r in runs:
        s = r.summary
        state = "complete" if s.complete else f"{s.shards_committed}/{s.shards_total} shards"
        util = None
        if r.timeline and r.timeline.get("samples"):
            last = r.timeline["samples"][-1]
            if last["t"] > 0 and last["busy"]:
                util = statistics.fmean(last["busy"].values()) / last["t"]
        rows.append(
            [
                r.run_id,
                r.method,
                state,
                f"{s.prompts_committed}/{s.prompts_total}",
                str(s.rows),
                str(s.status.get("failed", 0)),
                fmt(s.reward.get("mean")),
                fmt(s.nfe_per_prompt),
                fmt(util),
            ]
        )
    return rows


def render_html(runs: list[RunData], plots: dict[str, bytes]) -> str:
    table = summary_rows(runs)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    figures = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(plots[key]).decode()}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for key, title in PLOTS
        if key in plots
    )
    allocation = allocation_rows(runs[-1])
    if allocation:
        cells = "".join(
            "<tr>" + "".join(f"<{t}>{html.escape(c)}</{t}>" for c in row) + "</tr>"
            for row, t in zip(allocation, ["th"] + ["td"] * (len(allocation) - 1), strict=True)
        )
        figures = f"<h2>Dataset budget: allocation</h2><table>{cells}</table>{figures}"
    summary, hacking = hacking_lines(runs)
    if summary:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in summary)
        cells = "".join(
            "<tr>" + "".join(f"<{t}>{html.escape(c)}</{t}>" for c in row) + "</tr>"
            for row, t in zip(hacking, ["th"] + ["td"] * (len(hacking) - 1), strict=True)
        )
        figures = (
            f"<h2>Reward hacking</h2><ul>{items}</ul>"
            + (f"<table>{cells}</table>" if len(hacking) > 1 else "")
            + figures
        )
    config = html.escape(json.dumps(runs[-1].config, indent=1, sort_keys=True, default=str))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>flowscale report: {html.escape(runs[-1].run_id)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}figure{display:inline-block;margin:1em}"
        "pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:80%}</style></head><body>"
        f"<h1>flowscale report: {html.escape(runs[-1].run_id)}</h1>"
        f"<p>{html.escape(runs[-1].summary.uri)}</p><table><tr>{head}</tr>{body}</table>{figures}"
        f"<details><summary>configuration of {html.escape(runs[-1].run_id)}</summary><pre>{config}</pre></details>"
        "</body></html>\n"
    )


def render_markdown(runs: list[RunData], images: dict[str, str]) -> str:
    table = summary_rows(runs)
    lines = [f"# flowscale report: {runs[-1].run_id}", "", f"`{runs[-1].summary.uri}`", ""]
    lines.append("| " + " | ".join(table[0]) + " |")
    lines.append("|" + "---|" * len(table[0]))
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    lines.append("")
    allocation = allocation_rows(runs[-1])
    if allocation:
        lines += ["## Dataset budget: allocation", "", "| " + " | ".join(allocation[0]) + " |"]
        lines.append("|" + "---|" * len(allocation[0]))
        lines += ["| " + " | ".join(row) + " |" for row in allocation[1:]] + [""]
    summary, hacking = hacking_lines(runs)
    if summary:
        lines += ["## Reward hacking", ""] + [f"- {line}" for line in summary] + [""]
        if len(hacking) > 1:
            lines += ["| " + " | ".join(hacking[0]) + " |", "|" + "---|" * len(hacking[0])]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in hacking[1:]] + [""]
    for key, title in PLOTS:
        if key in images:
            lines += [f"## {title}", "", f"![{title}]({images[key]})", ""]
    return "\n".join(lines)


def write_report(runs: list[RunData], out: Path, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format: must be one of {', '.join(FORMATS)}; got {fmt!r}")
    plots = render_plots(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "html":
        out.write_text(render_html(runs, plots))
        return
    images = {}
    for key, data in plots.items():
        path = out.with_name(f"{out.stem}-{key}.png")
        path.write_bytes(data)
        images[key] = path.name
    out.write_text(render_markdown(runs, images))
