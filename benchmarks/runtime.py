"""Ray runtime benchmarks (issue 4): overhead against a plain torch loop, and scaling over replicas.

A thin wrapper over `flowscale bench` (flowscale_ray/benchmark/measure.py holds the measurements) that saves the
figures under benchmarks/results/runtime.{json,md}:

    .venv/bin/python -m benchmarks.runtime [--replicas 1,4,16,64] [--delay-ms 50] [--per-replica 8]

Overhead: the built-in model (jobs/bench.yaml: RBF, VP-SDE, 200 NFE), plain loop vs in-process vs Ray with one
replica, side by side in one run. Scaling: replicas that sleep 50 ms per call (a GPU's time per batch).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.common import save
from flowscale_ray.benchmark.command import configure_parser, format_report
from flowscale_ray.benchmark.command import run as bench


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(ap)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory() as tmp:
        args.out = str(Path(tmp) / "bench.json")
        if bench(args) != 0:
            raise SystemExit(2)
        report = json.loads(Path(args.out).read_text())
    shown = ("replicas", "delay_ms", "delay_batch", "per_replica")
    cmd = "python -m benchmarks.runtime " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in shown and v is not None
    )
    save("runtime", report, f"```\n{format_report(report)}\n```\n\nMeasured with `{cmd}`.")


if __name__ == "__main__":
    main()
