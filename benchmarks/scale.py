"""Scaling on virtual replicas: the driver against a naive Ray loop, side by side, and the driver's CPU per round.

A thin wrapper over `flowscale bench --virtual --skip-overhead` (flowscale_ray/benchmark/scale.py holds the
measurement) that saves the figures under benchmarks/results/<name>.{json,md}:

    nice .venv/bin/python -m benchmarks.scale [--name scale] [--replicas 1,16,64,256] [--delays 50,200]

Defaults: RBF with 4 chains and 50 NFE per prompt on the built-in job's sampler (10 steps), 8 prompts in flight
per replica, two waves of prompts (work grows with the replica count), micro-batches of 8 rows, 2 host processes.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.common import RESULTS, bench_report, save
from flowscale_ray.benchmark.command import configure_parser, format_report
from flowscale_ray.benchmark.scale import capacity, format_capacity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(ap)
    ap.add_argument("--name", default="scale", help="results file name under benchmarks/results (scale)")
    ap.add_argument("--tables-only", action="store_true", help="rewrite <name>.md from <name>.json, no measuring")
    ap.set_defaults(virtual=True, skip_overhead=True)
    args = ap.parse_args()
    if args.tables_only:
        report = json.loads((RESULTS / f"{args.name}.json").read_text())
        report["capacity"] = cap = capacity(report["virtual"])
        text = f"{format_report(report)}\n\n{format_capacity(cap)}\n\nMeasured with `{report.get('command')}`."
        save(args.name, report, text)  # its own "machine" (when it was measured) is kept
        return
    if not any(o.startswith("method") for o in args.overrides):
        args.overrides = ["method.nfe_budget=50", *args.overrides]
    report = bench_report(args)
    shown = ("replicas", "delays", "delay_batch", "per_replica", "hosts", "waves")
    cmd = "python -m benchmarks.scale " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in shown and v is not None
    )
    cmd += "".join(f" --set {o}" for o in args.overrides)
    report["capacity"] = cap = capacity(report["virtual"])
    report["command"] = f"nice -n -5 {cmd}"
    text = f"{format_report(report)}\n\n{format_capacity(cap)}\n\nMeasured with `{report['command']}`."
    save(args.name, report, text)


if __name__ == "__main__":
    main()
