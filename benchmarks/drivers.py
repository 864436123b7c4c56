"""One job over K drivers (`executor.drivers`, runtime/sharded.py) on virtual replicas: throughput side by side.

    nice .venv/bin/python -m benchmarks.drivers [--replicas 16] [--delays 50 200] [--drivers 1 2]

The same work (RBF, 50 NFE per prompt, the built-in job's sampler, 8 searches in flight per replica, two waves)
over the same number of virtual replicas and host processes (2), run by K driver actors (ShardedExecutor; K = 1
is one driver inside one actor, the same path). Efficiency = the replicas' simulated busy time / (replicas x
wall time), from the replica calls each shard forwards to the caller's recorder. On a 2-core machine K drivers
share the cores with the hosts and Ray: this shows the sharded path's cost, not K times the capacity.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks.common import save


class Busy:
    """Sums the replicas' busy seconds and NFE from the replica-call hooks."""

    def __init__(self) -> None:
        self.seconds, self.nfe, self.replicas = 0.0, 0, set()

    def __getattr__(self, name):  # every other hook: nothing
        return lambda *a, **k: None

    def replica_call(self, replica, stats) -> None:
        self.seconds += stats.seconds
        self.nfe += stats.nfe
        self.replicas.add(str(replica))


def measure(setup, n: int, k: int, delay_s: float, per_replica: int, waves: int) -> dict[str, Any]:
    from flowscale_ray.benchmark.virtual import VirtualReplica
    from flowscale_ray.runtime.options import RuntimeOptions
    from flowscale_ray.runtime.sharded import ShardedExecutor

    options = RuntimeOptions(replicas=n // k, in_flight=per_replica * n // k, micro_batch=8, num_cpus=0)
    worker = VirtualReplica.configured(delay_s, max(1, 2 // k))  # 2 host processes in all
    ex = ShardedExecutor(setup.model, setup.sampler, setup.reward, shards=k, options=options, worker=worker)
    try:
        list(ex.run(setup.tasks(2 * n)))  # warm-up: every host's first calls
        ex.recorder = busy = Busy()  # type: ignore[assignment]
        prompts = per_replica * n * waves
        t0 = time.perf_counter()
        nfe = sum(r.nfe for r in ex.run(setup.tasks(prompts, offset=2 * n)))
        wall = time.perf_counter() - t0
    finally:
        ex.close()
    if busy.nfe != nfe:
        raise RuntimeError(f"the replicas computed {busy.nfe} rows, the searches were charged {nfe}")
    return {
        "replicas": n, "drivers": k, "delay_ms": delay_s * 1000, "prompts": prompts, "nfe": nfe,
        "wall_s": wall, "efficiency": busy.seconds / (n * wall), "replicas_seen": len(busy.replicas),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--delays", type=float, nargs="+", default=[50.0, 200.0], help="ms per micro-batch of 8 rows")
    ap.add_argument("--drivers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--per-replica", type=int, default=8)
    ap.add_argument("--waves", type=int, default=2)
    args = ap.parse_args()

    from flowscale_ray.benchmark.command import DEFAULT_JOB
    from flowscale_ray.benchmark.measure import BenchSetup
    from flowscale_ray.config import load_job
    from flowscale_ray.io.prompts import load_prompts
    from flowscale_ray.runtime.cluster import start_ray
    from flowscale_ray.runtime.messages import ComponentSpec

    doc = json.loads(json.dumps(DEFAULT_JOB))
    doc["method"]["nfe_budget"] = 50
    job = load_job(doc, "bench")
    from pathlib import Path

    setup = BenchSetup(
        model=ComponentSpec("delay", {}), reward=ComponentSpec("delay", {}), sampler=job.sampler,
        method=job.method.build(), prompts=tuple(load_prompts(job.prompts, Path.cwd(), job.storage)), seed=job.seed,
    )  # fmt: skip
    start_ray(None)
    rows = []
    for delay in args.delays:
        for k in args.drivers:
            row = measure(setup, args.replicas, k, delay / 1000, args.per_replica, args.waves)
            print(json.dumps(row), flush=True)
            rows.append(row)
    md = [
        f"Virtual replicas ({args.replicas}, 2 host processes), RBF 50 NFE per prompt, {args.per_replica} searches "
        f"per replica in flight, {args.waves} waves; efficiency = simulated busy / (replicas x wall).",
        "",
        "| delay per micro-batch | drivers | prompts | wall s | efficiency |",
        "|---|---|---|---|---|",
        *(
            f"| {r['delay_ms']:.0f} ms | {r['drivers']} | {r['prompts']} | {r['wall_s']:.1f} | {r['efficiency']:.2f} |"
            for r in rows
        ),
        "",
        "Measured with `python -m benchmarks.drivers "
        + f"--replicas {args.replicas} --delays {' '.join(f'{d:g}' for d in args.delays)} "
        + f"--drivers {' '.join(map(str, args.drivers))}`.",
    ]
    save("drivers", {"rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
