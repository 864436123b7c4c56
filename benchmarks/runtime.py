"""Ray runtime benchmarks (issue 4): overhead against a plain torch loop, and scaling over replicas.

A thin wrapper over `flowscale bench` (flowscale_ray/benchmark/measure.py holds the measurements) that saves the
figures under benchmarks/results/runtime.{json,md}:

    .venv/bin/python -m benchmarks.runtime [--replicas 1,4,16,64] [--delay-ms 50] [--per-replica 8]

Overhead: the built-in model (jobs/bench.yaml: RBF, VP-SDE, 200 NFE), plain loop vs in-process vs Ray with one
replica, side by side in one run. Scaling: replicas that sleep 50 ms per call (a GPU's time per batch).
"""

from __future__ import annotations

import argparse

from benchmarks.common import bench_report, save
from flowscale_ray.benchmark.command import configure_parser, format_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(ap)
    args = ap.parse_args()
    report = bench_report(args)
    shown = ("replicas", "delay_ms", "delay_batch", "per_replica")
    cmd = "python -m benchmarks.runtime " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in shown and v is not None
    )
    save("runtime", report, f"```\n{format_report(report)}\n```\n\nMeasured with `{cmd}`.")


if __name__ == "__main__":
    main()
