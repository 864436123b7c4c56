"""`flowscale bench`: what users run to benchmark a cluster (or this machine).

    flowscale bench [JOB.yaml] [--address ADDR] [--replicas 1,4,16,64] [--delay-ms 50] [--delay-batch 8]
                    [--out bench.json]
    flowscale bench --virtual [--replicas 1,16,64,256] [--delays 50,200] [--hosts 2] [--waves 2] ...

The model, reward, sampler, method and each replica's resources come from the job file (default: the built-in
model and reward with RBF, `jobs/bench.yaml`'s settings). Two measurements (flowscale_ray/benchmark/measure.py):
the runtime's overhead against a plain torch loop (one replica, side by side in one run), and scaling over
replica counts with replicas that sleep a fixed delay per model call of a fixed shape (`--delay-ms` per
`--delay-batch` rows, standing in for a GPU's time per batch; `--delay-batch 0`: per replica call; `--delay-ms 0`
uses real model replicas instead). Writes a JSON report and prints a short table.

`--virtual` replaces the scaling run with virtual replicas (flowscale_ray/benchmark/scale.py): many GPU stand-ins
hosted by `--hosts` async actors, the real driver against a naive Ray loop on the same replicas, at every
`--delays` (ms per micro-batch of `--delay-batch` rows) and replica count, with the driver's CPU per round by
category.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", nargs="?", help="job file for the model, reward, sampler, method and replica resources")
    p.add_argument(
        "--address",
        help="Ray cluster ('auto' inside a Ray job, HOST:6379, ray://HOST:10001); "
        "default: the job's executor.address, else a local Ray on 127.0.0.1",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a job field (repeatable)",
    )
    p.add_argument(
        "--replicas",
        default=None,
        metavar="N,N,...",
        help="replica counts for scaling (default 1,4,16,64; with --virtual 1,16,64,256)",
    )
    p.add_argument(
        "--delay-ms",
        type=float,
        default=50.0,
        help="milliseconds per delayed model call (--delay-batch rows) in the scaling run (default 50); "
        "0: real model replicas",
    )
    p.add_argument(
        "--delay-batch",
        type=int,
        default=8,
        metavar="ROWS",
        help="rows per delayed model call: a replica call of R rows sleeps ceil(R/ROWS) delays, as a GPU running "
        "a fixed batch shape (default 8); 0: one delay per replica call, whatever its size (a driver stress test)",
    )
    p.add_argument("--per-replica", type=int, default=8, metavar="N", help="prompts in flight per replica (8)")
    p.add_argument("--prompts", type=int, default=16, metavar="N", help="prompts in the overhead run (16)")
    p.add_argument(
        "--virtual",
        action="store_true",
        help="scaling on virtual replicas (many per process) with the driver and a naive Ray loop side by side",
    )
    p.add_argument(
        "--delays",
        default="50,200",
        metavar="MS,MS,...",
        help="with --virtual: milliseconds per micro-batch of --delay-batch rows (default 50,200)",
    )
    p.add_argument("--hosts", type=int, default=2, help="with --virtual: processes hosting the virtual replicas (2)")
    p.add_argument(
        "--waves", type=int, default=2, help="with --virtual: prompts = per-replica x replicas x waves (default 2)"
    )
    p.add_argument("--skip-overhead", action="store_true", help="only the scaling run")
    p.add_argument("--skip-scaling", action="store_true", help="only the overhead run")
    p.add_argument("--out", default="bench.json", metavar="FILE", help="JSON report (default bench.json)")


def _error(message: str) -> int:
    print(f"flowscale: error: {message}", file=sys.stderr)
    return 2


DEFAULT_JOB: dict[str, Any] = {
    "name": "bench",
    "seed": 0,
    "model": {"name": "shapes"},
    "reward": {"name": "counting"},
    "sampler": {"preset": "vp-sde", "steps": 10},
    "method": {"name": "rbf", "n_chains": 4, "nfe_budget": 200},
    "prompts": ["3 red circles", "2 blue squares and 4 yellow circles", "5 green squares", "6 yellow circles"],
    "executor": {"kind": "ray"},
}


def run(args: argparse.Namespace) -> int:
    from flowscale_ray.config import ConfigError, apply_overrides, load_job, read_job_file

    virtual = getattr(args, "virtual", False)
    replicas = args.replicas or ("1,16,64,256" if virtual else "1,4,16,64")
    try:
        counts = [int(c) for c in str(replicas).split(",") if c.strip()]
        if not counts or min(counts) < 1:
            raise ValueError
    except ValueError:
        return _error(f"--replicas: expected comma-separated counts >= 1 such as 1,4,16,64, got {replicas!r}")
    try:
        delays = [float(d) for d in str(getattr(args, "delays", "50,200")).split(",") if d.strip()]
        if not delays or min(delays) <= 0 or not all(d < float("inf") for d in delays):
            raise ValueError
    except ValueError:
        return _error(f"--delays: expected comma-separated milliseconds > 0 such as 50,200, got {args.delays!r}")
    for name in ("hosts", "waves"):
        if getattr(args, name, 1) < 1:
            return _error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if virtual and args.delay_batch < 1:
        return _error(f"--delay-batch: must be >= 1 with --virtual (rows per micro-batch), got {args.delay_batch}")
    for name in ("per_replica", "prompts"):
        if getattr(args, name) < 1:
            return _error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.delay_ms < 0:
        return _error(f"--delay-ms: must be >= 0, got {args.delay_ms}")
    if args.delay_batch < 0:
        return _error(f"--delay-batch: must be >= 0, got {args.delay_batch}")
    try:
        if args.job:
            job = read_job_file(args.job, list(args.overrides))
        else:
            job = load_job(apply_overrides(json.loads(json.dumps(DEFAULT_JOB)), list(args.overrides)), "bench")
    except ConfigError as exc:
        return _error(str(exc) if not args.job or str(exc).startswith(args.job) else f"{args.job}: {exc}")

    from pathlib import Path

    from flowscale_ray.benchmark.measure import BenchSetup, cluster_info, overhead, scaling
    from flowscale_ray.io.prompts import load_prompts
    from flowscale_ray.runtime.cluster import start_ray
    from flowscale_ray.runtime.messages import ComponentSpec

    base = Path(args.job).resolve().parent if args.job else Path.cwd()
    try:
        prompts = load_prompts(job.prompts, base, job.storage)
    except ConfigError as exc:
        return _error(str(exc))
    setup = BenchSetup(
        model=ComponentSpec(job.model.name, dict(job.model.options)),
        reward=ComponentSpec(job.reward.name, dict(job.reward.options)),
        sampler=job.sampler,
        method=job.method.build(),
        prompts=tuple(prompts),
        seed=job.seed,
        num_cpus=job.executor.num_cpus,
        num_gpus=job.executor.num_gpus,
        micro_batch=job.executor.micro_batch,
    )
    address = args.address or job.executor.address
    started = start_ray(address)
    report: dict[str, Any] = {
        "job": args.job or "(built-in default)",
        "cluster": cluster_info(),
        "settings": {
            "model": job.model.name,
            "reward": job.reward.name,
            "method": job.method.name,
            "sampler": dataclasses.asdict(job.sampler),
            "replicas": counts,
            "delay_ms": args.delay_ms,
            "delay_batch": args.delay_batch,
            "per_replica": args.per_replica,
            "overhead_prompts": args.prompts,
            **({"virtual": True, "delays_ms": delays, "hosts": args.hosts, "waves": args.waves} if virtual else {}),
        },
    }
    try:
        if not args.skip_overhead:
            print(f"overhead: {args.prompts} prompts, {job.method.name} on {job.model.name}, one replica ...")
            report["overhead"] = overhead(setup, args.prompts, timeout_s=job.executor.call_timeout_s)
        if not args.skip_scaling and virtual:
            from flowscale_ray.benchmark.scale import virtual_scaling

            print(
                f"scaling: virtual replicas at {', '.join(map(str, counts))}, {', '.join(f'{d:g}' for d in delays)} "
                f"ms per {args.delay_batch} rows, {args.per_replica} prompts each, {args.hosts} hosts ..."
            )
            report["virtual"] = virtual_scaling(
                setup,
                counts,
                [d / 1000 for d in delays],
                per_replica=args.per_replica,
                micro_batch=args.delay_batch,
                waves=args.waves,
                hosts=args.hosts,
                timeout_s=job.executor.call_timeout_s,
            )
        elif not args.skip_scaling:
            per = f"per {args.delay_batch} rows" if args.delay_batch else "per call"
            what = f"{args.delay_ms:g} ms {per} delay replicas" if args.delay_ms > 0 else f"{job.model.name} replicas"
            print(f"scaling: {what} at {', '.join(map(str, counts))} replicas, {args.per_replica} prompts each ...")
            report["scaling"] = scaling(
                setup,
                counts,
                args.per_replica,
                args.delay_ms / 1000 if args.delay_ms > 0 else None,
                timeout_s=job.executor.call_timeout_s,
                delay_batch=args.delay_batch or None,
            )
    finally:
        if started:
            import ray

            ray.shutdown()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    print(f"report: {args.out}")
    return 0


def format_report(report: dict[str, Any]) -> str:
    lines = []
    over = report.get("overhead")
    if over:
        n = over["nfe_per_s"]
        lines += [
            f"Overhead ({over['model']}, {over['method']}, {over['prompts']} prompts, {over['nfe']} NFE, "
            f"mean batch {over['mean_batch']['ray']:.0f}):",
            f"  plain loop {n['plain_loop']:10.0f} NFE/s",
            f"  in-process {n['in_process']:10.0f} NFE/s  ({over['ratio_inprocess_vs_plain']:.2f} of plain)",
            f"  Ray, 1 rep {n['ray_1_replica']:10.0f} NFE/s  ({over['ratio_ray_vs_plain']:.2f} of plain; target 0.90)",
        ]
    rows = report.get("scaling")
    if rows:
        lines.append("Scaling:")
        lines.append("  replicas      NFE/s  efficiency  busy  driver ms/round  driver CPU")
        for r in rows:
            lines.append(
                f"  {r['replicas']:>8} {r['nfe_per_s']:10.0f} {r['parallel_efficiency']:11.2f} "
                f"{r['busy_fraction']:5.2f} {r['driver_ms_per_round']:16.2f} {r['driver_cpu_fraction']:10.0%}"
            )
    if report.get("virtual"):
        from flowscale_ray.benchmark.scale import format_table

        lines += ["Scaling on virtual replicas (driver vs naive Ray loop):", format_table(report["virtual"])]
    return "\n".join(lines)
