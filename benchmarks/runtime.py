"""Ray runtime benchmarks: overhead against a plain torch loop, and scaling over replicas.

Overhead: the same searches (SVDD, many prompts in flight) on the same model, measured side by side in one
run: (a) a plain loop calling model.velocity on exactly the batch sizes the engine used, (b) the in-process
executor, (c) the Ray runtime with one replica. NFE/s of each; target (c)/(a) >= 0.9.

Scaling: replicas whose work is a fixed delay per call (50 ms, standing in for a GPU's time per batch) at
1, 4, 16 and 64 replicas; the work grows with the replicas (8 prompts per replica). Parallel efficiency =
throughput(n) / (n x throughput(1)); busy = replica busy time / (n x wall); the driver's CPU time per round.

    .venv/bin/python -m benchmarks.runtime [--replicas 1 4 16 64] [--delay 0.05]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from benchmarks.common import save
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models.registry import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.search import METHODS


def _ray_init(cpus: int) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )


def overhead(model_name: str, model_options: dict, reward_name: str, reward_options: dict, prompts: int) -> dict:
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions
    from flowscale_ray.runtime.messages import ComponentSpec

    spec = SamplerSpec()
    method = METHODS["svdd"]()
    tasks = [SearchTask(Prompt(f"p{i}", ""), method, seed=0) for i in range(prompts)]
    model = build_model(model_name, model_options)
    sizes: list[int] = []
    inner = model.velocity

    def recording(x, t, cond):
        sizes.append(x.shape[0])
        return inner(x, t, cond)

    model.velocity = recording  # type: ignore[method-assign]
    reward = build_reward(reward_name, reward_options)
    ex = InProcessExecutor(ParticleEngine(model, spec), reward, in_flight=prompts)
    t0 = time.perf_counter()
    res = list(ex.run(tasks))
    t_inproc = time.perf_counter() - t0
    nfe = sum(r.nfe for r in res)
    # (a) the plain loop: the same model calls, nothing else
    model.velocity = inner  # type: ignore[method-assign]
    cond = model.encode([""])
    inputs = [
        (
            torch.randn(n, *model.latent_shape).to(model.dtype),
            torch.rand(n) * 0.9 + 0.05,
            {k: v.expand(n, *v.shape[1:]) for k, v in cond.items()},
        )
        for n in sizes
    ]
    t_plain = float("inf")
    for _ in range(2):  # the first pass warms up the kernels, as the executors' own first calls did not
        t0 = time.perf_counter()
        with torch.inference_mode():
            for x, t, c in inputs:
                model.velocity(x, t, c)
        t_plain = min(t_plain, time.perf_counter() - t0)
    # (c) Ray, one replica with the same threads
    rex = RayExecutor(
        ComponentSpec(model_name, model_options),
        spec,
        ComponentSpec(reward_name, reward_options),
        options=RuntimeOptions(replicas=1, in_flight=prompts, num_cpus=2),
    )
    t0 = time.perf_counter()
    rres = list(rex.run(tasks))
    t_ray = time.perf_counter() - t0
    rex.shutdown()
    assert sum(r.nfe for r in rres) == nfe
    return {
        "model": model_name,
        "prompts": prompts,
        "nfe": nfe,
        "model_calls": len(sizes),
        "mean_batch": nfe / max(1, len(sizes)),
        "nfe_per_s": {"plain_loop": nfe / t_plain, "in_process": nfe / t_inproc, "ray_1_replica": nfe / t_ray},
        "ratio_ray_vs_plain": t_plain / t_ray,
        "ratio_inprocess_vs_plain": t_plain / t_inproc,
    }


def scaling(replica_counts: list[int], delay: float, per_replica: int) -> list[dict]:
    from flowscale_ray.runtime.delay import DelayReplica
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions
    from flowscale_ray.runtime.messages import ComponentSpec

    rows = []
    method = METHODS["bon"](METHODS["bon"].Config(n=16))
    for n in replica_counts:
        tasks = [SearchTask(Prompt(f"p{i}", ""), method, seed=0) for i in range(per_replica * n)]
        ex = RayExecutor(
            ComponentSpec("delay", {}),
            SamplerSpec(),
            ComponentSpec("delay", {}),
            options=RuntimeOptions(
                replicas=n, in_flight=per_replica * n, num_cpus=0.01, delay_per_call=delay, slack=16
            ),
            worker=DelayReplica,
        )
        cpu0, t0 = time.process_time(), time.perf_counter()
        res = list(ex.run(tasks))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stats = ex.stats()
        ex.shutdown()
        nfe = sum(r.nfe for r in res)
        busy = sum(s["busy_seconds"] for s in stats) / (n * wall)
        rows.append(
            {
                "replicas": n,
                "prompts": len(tasks),
                "nfe": nfe,
                "wall_s": wall,
                "nfe_per_s": nfe / wall,
                "busy_fraction": busy,
                "rounds": ex.metrics["rounds"],
                "driver_ms_per_round": 1000 * cpu / max(1, ex.metrics["rounds"]),
                "calls_per_replica": sum(s["calls"] for s in stats) / n,
            }
        )
        per_round = rows[-1]["driver_ms_per_round"]
        print(f"{n:>3} replicas: {nfe / wall:9.0f} NFE/s, busy {busy:.2f}, driver {per_round:.2f} ms/round")
    base = rows[0]["nfe_per_s"] / rows[0]["replicas"]
    for r in rows:
        r["parallel_efficiency"] = r["nfe_per_s"] / (r["replicas"] * base)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--delay", type=float, default=0.05)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--per-replica", type=int, default=8)
    args = ap.parse_args()
    _ray_init(max(2, max(args.replicas)))
    over = overhead(
        "gmm_highdim",
        {"dim": 64},
        "mode_log_density",
        {"model": "gmm_highdim", "model_options": {"dim": 64}, "mode": 0},
        args.prompts,
    )
    print(over)
    scale = scaling(args.replicas, args.delay, args.per_replica)
    md = [
        "### Overhead (same searches, same batch sizes, side by side)",
        "",
        "| model | NFE | mean batch | plain loop NFE/s | in-process NFE/s | Ray 1 replica NFE/s | Ray / plain |",
        "|---|---|---|---|---|---|---|",
        f"| {over['model']} | {over['nfe']} | {over['mean_batch']:.0f} | {over['nfe_per_s']['plain_loop']:.0f} | "
        f"{over['nfe_per_s']['in_process']:.0f} | {over['nfe_per_s']['ray_1_replica']:.0f} | "
        f"{over['ratio_ray_vs_plain']:.2f} |",
        "",
        f"### Scaling ({args.delay * 1000:.0f} ms per call, {args.per_replica} prompts per replica, BoN n=16)",
        "",
        "| replicas | NFE/s | parallel efficiency | replica busy | driver ms/round |",
        "|---|---|---|---|---|",
    ]
    for r in scale:
        md.append(
            f"| {r['replicas']} | {r['nfe_per_s']:.0f} | {r['parallel_efficiency']:.2f} | "
            f"{r['busy_fraction']:.2f} | {r['driver_ms_per_round']:.2f} |"
        )
    save("runtime", {"overhead": over, "scaling": scale}, "\n".join(md))


if __name__ == "__main__":
    main()
