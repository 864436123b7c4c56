"""The scaling benchmark on virtual replicas (`flowscale bench --virtual`): the real driver against a naive Ray
loop, side by side on the same virtual replicas, and the driver's CPU per scheduling round by category.

For each delay (simulated GPU seconds per started micro-batch of `micro_batch` rows) and each replica count n:
one `RayExecutor` over n virtual replicas (`virtual.VirtualReplica`, hosted by a few async actors), a warm-up,
then `per_replica * n * waves` searches with `per_replica * n` in flight (work grows with n). Then `NaiveLoop`
on the same virtual replicas makes the same number of rows in full micro-batches, two calls in flight per
replica. Both report:

- parallel efficiency = ideal time / wall time, where ideal time = (rows / micro_batch) x delay / n: the wall
  time of n GPUs doing the same rows in full micro-batches back to back (padding and idle time both count
  against it);
- busy = simulated GPU time (padding included) / (n x wall);
- fill = rows / padded rows; late = how long the hosts' sleeps ran past their nominal end (the hosts' event
  loops under load: on a real GPU that time does not exist, here it counts as idle).

The driver's run is timed by category (`virtual.TimedScheduler`, main-thread CPU, exclusive) and counts Ray's
own threads in the driver process (process CPU minus main-thread CPU). The recorder is the one `flowscale run`
uses when it serves Prometheus metrics.
"""

from __future__ import annotations

import math
import time
from typing import Any

import ray

from flowscale_ray.benchmark.measure import BenchSetup
from flowscale_ray.benchmark.virtual import CATEGORIES, Clock, NaiveLoop, TimedRecorder, TimedScheduler, VirtualReplica
from flowscale_ray.runtime.messages import ComponentSpec

# The categories that grow with the search steps a round carries; the others are paid per call.
STEP_CATEGORIES = ("results", "placement", "decisions", "metrics")


def _stats(handles: list[Any], timeout_s: float) -> dict[str, float]:
    per = ray.get([h.stats.remote() for h in handles], timeout=timeout_s)
    keys = ("gpu_seconds", "late_seconds", "calls", "nfe")
    return {k: float(sum(s[k] for s in per)) for k in keys}


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def _window(hosts: list[Any], t0: float, t1: float, n: int, delay_s: float, micro_batch: int) -> dict[str, float]:
    """Efficiency and busy over the wall-clock window [t0, t1] from the hosts' timelines (calls cut at its edges,
    their rows pro-rated)."""
    gpu = rows = 0.0
    for calls in ray.get([h.timeline.remote() for h in hosts]):
        for _vid, start, end, r in calls:
            overlap = min(end, t1) - max(start, t0)
            if overlap > 0:
                gpu += overlap
                rows += r * overlap / (end - start)
    span = max(1e-9, t1 - t0)
    return {
        "window_s": t1 - t0,
        "parallel_efficiency": rows / micro_batch * delay_s / (n * span),
        "busy_fraction": gpu / (n * span),
    }


def _figures(n: int, delay_s: float, micro_batch: int, wall: float, d: dict[str, float]) -> dict[str, Any]:
    ideal = d["nfe"] / micro_batch * delay_s / n
    padded = d["gpu_seconds"] / delay_s * micro_batch
    return {
        "wall_s": wall,
        "nfe": int(d["nfe"]),
        "nfe_per_s": d["nfe"] / wall,
        "ideal_s": ideal,
        "parallel_efficiency": ideal / wall,
        "busy_fraction": d["gpu_seconds"] / (n * wall),
        "fill": d["nfe"] / padded if padded else 0.0,
        "late_fraction": d["late_seconds"] / (n * wall),
        "calls": int(d["calls"]),
        "rows_per_call": d["nfe"] / max(1.0, d["calls"]),
    }


def driver_run(
    setup: BenchSetup, n: int, delay_s: float, micro_batch: int, per_replica: int, waves: int, hosts: int,
    timeout_s: float, naive: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """One replica count at one delay: the driver's run (timed by category), then the naive loop's."""
    from flowscale_ray.observe.recorder import RunRecorder
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions

    ex = RayExecutor(
        ComponentSpec("delay", {}),
        setup.sampler,
        ComponentSpec("delay", {}),
        options=RuntimeOptions(
            replicas=n, in_flight=per_replica * n, micro_batch=micro_batch, call_timeout_s=timeout_s, num_cpus=0
        ),
        worker=VirtualReplica.configured(delay_s, hosts),
    )
    try:
        list(ex.run(setup.tasks(min(n, 16))))  # warm-up: first calls on every host
        prompts = per_replica * n * waves
        tasks = setup.tasks(prompts, offset=n)
        last_started: list[float] = []

        def pulled():  # the tasks, noting when the last one is started: the end of the steady state
            for i, task in enumerate(tasks):
                if i == len(tasks) - 1:
                    last_started.append(time.time())
                yield task

        ray.get([h.timeline.remote() for h in ex._actors])  # drop the warm-up's calls
        clock = Clock()
        ex.clock = clock  # type: ignore[attr-defined]
        ex.scheduler_class = TimedScheduler
        ex.recorder = TimedRecorder(  # type: ignore[assignment]
            RunRecorder("bench", "delay", "delay", prompts=prompts, planned_nfe=0, replicas=n, prometheus=True), clock
        )
        before, rounds0, calls0 = _stats(ex.replicas, timeout_s), ex.metrics["rounds"], ex.metrics["calls"]
        cpu0, main0, t0, w0 = time.process_time(), time.thread_time(), time.perf_counter(), time.time()
        clock.last = main0
        nfe = sum(r.nfe for r in ex.run(pulled()))
        wall = time.perf_counter() - t0
        cpu, main = time.process_time() - cpu0, time.thread_time() - main0
        after = _stats(ex.replicas, timeout_s)
        rounds = ex.metrics["rounds"] - rounds0
        d = _delta(after, before)
        if int(d["nfe"]) != nfe:
            raise RuntimeError(f"the replicas computed {d['nfe']:.0f} rows, the searches were charged {nfe}")
        row: dict[str, Any] = {
            "replicas": n,
            "delay_ms": delay_s * 1000,
            "prompts": prompts,
            **_figures(n, delay_s, micro_batch, wall, d),
            "rounds": rounds,
            "rounds_per_s": rounds / wall,
            "step_calls_sent": ex.metrics["calls"] - calls0,
            "driver_cpu_fraction": cpu / wall,
            "driver_ms_per_round": 1000 * cpu / max(1, rounds),
        }
        if waves > 1:  # until the last prompt starts, every replica has its share of searches in flight
            row["steady"] = _window(ex._actors, w0, last_started[0], n, delay_s, micro_batch)
        per_round = {k: 1000 * v / max(1, rounds) for k, v in clock.seconds.items()}
        per_round["other (loop)"] = 1000 * (main - sum(clock.seconds.values())) / max(1, rounds)
        per_round["ray threads"] = 1000 * (cpu - main) / max(1, rounds)
        row["driver_ms_per_round_by_category"] = per_round
        steps = clock.counts.get("advance", 0)  # search steps: a method fed its batch's evaluations
        row["search_steps_per_round"] = steps / max(1, rounds)
        per_step = sum(per_round[c] for c in STEP_CATEGORIES) / max(1e-9, row["search_steps_per_round"])
        row["driver_ms_per_search_step"] = per_step
        row["driver_ms_per_call"] = sum(v for c, v in per_round.items() if c not in STEP_CATEGORIES)
        if naive:
            loop = NaiveLoop(ex.replicas, micro_batch)
            calls = max(1, math.ceil(nfe / (n * micro_batch)))
            before = _stats(ex.replicas, timeout_s)
            ray.get([h.timeline.remote() for h in ex._actors])
            cpu0, t0, w0 = time.process_time(), time.perf_counter(), time.time()
            rows = loop.run(calls)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            d = _delta(_stats(ex.replicas, timeout_s), before)
            if rows != int(d["nfe"]) or rows != calls * n * micro_batch:
                raise RuntimeError(f"the naive loop got {rows} rows back, the replicas computed {d['nfe']:.0f}")
            row["naive"] = {
                **_figures(n, delay_s, micro_batch, wall, d),
                "driver_cpu_fraction": cpu / wall,
                "driver_ms_per_call": 1000 * cpu / max(1.0, d["calls"]),
            }
            if waves > 1:  # the same window: until the last call is sent
                row["naive"]["steady"] = _window(ex._actors, w0, loop.last_sent, n, delay_s, micro_batch)
    finally:
        ex.close()
    return row


def virtual_scaling(
    setup: BenchSetup,
    replica_counts: list[int],
    delays_s: list[float],
    per_replica: int = 8,
    micro_batch: int = 8,
    waves: int = 2,
    hosts: int = 2,
    timeout_s: float = 600.0,
    naive: bool = True,
    log=print,
) -> list[dict[str, Any]]:
    """Driver and naive loop at every (delay, replica count)."""
    rows = []
    for delay_s in delays_s:
        for n in replica_counts:
            row = driver_run(setup, n, delay_s, micro_batch, per_replica, waves, hosts, timeout_s, naive)
            rows.append(row)
            log(format_row(row))
    return rows


def _steady(r: dict[str, Any], key: str) -> str:
    return f"{r['steady'][key]:.3f}" if "steady" in r else "-"


def format_row(r: dict[str, Any]) -> str:
    nv = r.get("naive", {})
    text = (
        f"{r['delay_ms']:5.0f} ms x {r['replicas']:>4}: driver eff {r['parallel_efficiency']:.3f} "
        f"(steady {_steady(r, 'parallel_efficiency')}) busy {r['busy_fraction']:.3f} "
        f"(steady {_steady(r, 'busy_fraction')}) fill {r['fill']:.3f} late {r['late_fraction']:.3f}, "
        f"{r['rounds_per_s']:5.0f} rounds/s, {r['driver_ms_per_round']:.2f} ms/round "
        f"({r['driver_cpu_fraction']:.0%} of a core)"
    )
    if nv:
        text += f" | naive eff {nv['parallel_efficiency']:.3f} (steady {_steady(nv, 'parallel_efficiency')})"
    return text


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| delay per micro-batch | replicas | driver efficiency, steady (whole run) | driver busy, steady (whole run) "
        "| naive efficiency, steady (whole run) | fill | rounds/s | driver ms/round | driver CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        nv = r.get("naive")
        naive = f"{_steady(nv, 'parallel_efficiency')} ({nv['parallel_efficiency']:.3f})" if nv else "-"
        lines.append(
            f"| {r['delay_ms']:.0f} ms | {r['replicas']} | {_steady(r, 'parallel_efficiency')} "
            f"({r['parallel_efficiency']:.3f}) | {_steady(r, 'busy_fraction')} ({r['busy_fraction']:.3f}) | {naive} "
            f"| {r['fill']:.3f} | {r['rounds_per_s']:.0f} | {r['driver_ms_per_round']:.2f} "
            f"| {r['driver_cpu_fraction']:.0%} |"
        )
    cats = [*CATEGORIES, "other (loop)", "ray threads"]
    lines += [
        "",
        "Driver CPU per round (ms) by category, and split into a part per call and a part per search step:",
        "",
        "| delay | replicas | " + " | ".join(cats) + " | search steps/round | per call | per step |",
        "|---|---|" + "---|" * (len(cats) + 3),
    ]
    for r in rows:
        b = r["driver_ms_per_round_by_category"]
        lines.append(
            f"| {r['delay_ms']:.0f} ms | {r['replicas']} | "
            + " | ".join(f"{b[c]:.3f}" for c in cats)
            + f" | {r['search_steps_per_round']:.1f} | {r['driver_ms_per_call']:.3f} "
            f"| {r['driver_ms_per_search_step']:.3f} |"
        )
    return "\n".join(lines)


# -- how many GPUs one driver feeds, from the measured CPU per call and per search step -----------------------------
def capacity(rows: list[dict[str, Any]], min_replicas: int = 16) -> dict[str, Any]:
    """The driver's measured costs (medians over the runs with at least `min_replicas` replicas): CPU per call,
    per search step, search rows per step; and the rounds per second sustained at >= 0.95 steady efficiency."""
    import statistics

    big = [r for r in rows if r["replicas"] >= min_replicas] or rows
    ok = [r["rounds_per_s"] for r in rows if r.get("steady", r)["parallel_efficiency"] >= 0.95]
    return {
        "ms_per_call": statistics.median(r["driver_ms_per_call"] for r in big),
        "ms_per_search_step": statistics.median(r["driver_ms_per_search_step"] for r in big),
        "rows_per_search_step": statistics.median(
            r["nfe"] / max(1, r["rounds"] * r["search_steps_per_round"]) for r in big
        ),
        "ms_per_round": statistics.median(r["driver_ms_per_round"] for r in big),
        "max_rounds_per_s_at_095": max(ok) if ok else None,
    }


def gpus_fed(cap: dict[str, Any], seconds_per_row: float, call_rows: int, core_share: float = 0.8) -> float:
    """GPUs one driver keeps busy when each call carries `call_rows` rows (one micro-batch) taking
    `seconds_per_row` each on the GPU, the driver spending at most `core_share` of one core: each GPU asks for a
    call every call_rows x seconds_per_row seconds, each call costs the driver its per-call CPU plus its
    search steps' (call_rows / rows per step)."""
    cpu = (cap["ms_per_call"] + call_rows / cap["rows_per_search_step"] * cap["ms_per_search_step"]) / 1000
    return core_share * call_rows * seconds_per_row / cpu


MODELS = {"FLUX.1-dev 1024x1024": 0.14, "small model 512x512": 0.02}  # seconds per velocity row on one GPU


def format_capacity(cap: dict[str, Any], micro_batches: tuple[int, ...] = (4, 8, 16, 32)) -> str:
    lines = [
        f"Driver costs (medians over runs with >= 16 replicas): {cap['ms_per_call']:.2f} ms per call + "
        f"{cap['ms_per_search_step']:.3f} ms per search step ({cap['rows_per_search_step']:.1f} rows per step); "
        f"{cap['ms_per_round']:.2f} ms per round as measured.",
        "Rounds per second sustained at >= 0.95 steady efficiency on this machine: "
        + (f"{cap['max_rounds_per_s_at_095']:.0f}" if cap["max_rounds_per_s_at_095"] else "none reached"),
        "",
        "GPUs one driver feeds (0.8 of one core; calls of micro_batch rows, two in progress per GPU):",
        "",
        "| micro_batch | " + " | ".join(MODELS) + " |",
        "|---|" + "---|" * len(MODELS),
    ]
    for mb in micro_batches:
        lines.append(f"| {mb} | " + " | ".join(f"{gpus_fed(cap, t, mb):.0f}" for t in MODELS.values()) + " |")
    return "\n".join(lines)
