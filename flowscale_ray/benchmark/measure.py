"""Runtime benchmarks, run against whatever Ray cluster is connected (`flowscale bench`, benchmarks/runtime.py).

Overhead: the same searches on the same model, side by side in one run. A `PlainLoop` actor with the replica's
own resources (so on a GPU cluster it gets a GPU like the replica) first runs the searches with the in-process
executor, recording the batch size of every model call, then times a plain torch loop that makes exactly those
model calls on random inputs and nothing else. Then the Ray runtime runs the same searches with one replica.
Ratio = plain-loop time / Ray time (target >= 0.9).

Scaling: n replicas whose work is a fixed delay per model call of a fixed shape (`DelayReplica`, standing in
for a GPU's time per batch: `delay_batch` rows per call, or one delay per replica call), or n real model
replicas. Work grows with n (`per_replica` prompts in flight per replica); a warm-up
run on the same actors comes first, so actor start-up and first-call imports are not measured. Parallel
efficiency = throughput(n) / (n x throughput(n_min) / n_min); busy = replica busy time / (n x wall); and the
driver's own CPU time per scheduling round (one replica call sent and its results processed).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import ray

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution.tasks import SearchTask
from flowscale_ray.prompts import Prompt
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.search.base import SearchMethod


@dataclass(frozen=True)
class BenchSetup:
    """What to benchmark: a model, its reward, the sampler and the search method, and each replica's share."""

    model: ComponentSpec
    reward: ComponentSpec
    sampler: SamplerSpec
    method: SearchMethod
    prompts: tuple[Prompt, ...]
    seed: int = 0
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    micro_batch: int | None = None

    def tasks(self, count: int, offset: int = 0) -> list[SearchTask]:
        """`count` tasks cycling over the prompts, each with its own prompt id (so its own noise)."""
        out = []
        for i in range(offset, offset + count):
            p = self.prompts[i % len(self.prompts)]
            out.append(SearchTask(Prompt(f"bench-{i}", p.text), self.method, seed=self.seed))
        return out


class PlainLoop:
    """The reference: the searches in-process (recording model-call batch sizes), then a bare torch loop."""

    def __init__(self, model: ComponentSpec, sampler: SamplerSpec, reward: ComponentSpec, micro_batch: int | None):
        from flowscale_ray.runtime.replica import build_model_from, build_reward_from

        self.model = build_model_from(model)
        built = build_reward_from(reward)
        assert built is not None
        self.reward = built
        self.sampler = sampler
        self.micro_batch = micro_batch

    def measure(self, tasks: list[SearchTask], repeats: int = 2) -> dict[str, Any]:
        import torch

        from flowscale_ray.execution import InProcessExecutor, ParticleEngine

        model = self.model
        sizes: list[int] = []
        inner = model.velocity

        def recording(x, t, cond):
            sizes.append(int(x.shape[0]))
            return inner(x, t, cond)

        model.velocity = recording  # type: ignore[method-assign,unused-ignore]
        try:
            ex = InProcessExecutor(
                ParticleEngine(model, self.sampler, micro_batch=self.micro_batch), self.reward, in_flight=len(tasks)
            )
            t0 = time.perf_counter()
            nfe = sum(r.nfe for r in ex.run(tasks))
            inprocess_s = time.perf_counter() - t0
        finally:
            model.velocity = inner  # type: ignore[method-assign,unused-ignore]
        cond = model.encode([tasks[0].prompt.text])
        gen = torch.Generator().manual_seed(0)
        inputs = []
        for n in sizes:
            x = torch.randn(n, *model.latent_shape, generator=gen).to(device=model.device, dtype=model.dtype)
            t = (torch.rand(n, generator=gen) * 0.9 + 0.05).to(model.device)
            inputs.append((x, t, {k: v.expand(n, *v.shape[1:]) for k, v in cond.items()}))
        sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        plain_s = float("inf")
        for _ in range(repeats):  # the best of `repeats` passes: the first also warms up the kernels
            sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                for x, t, c in inputs:
                    model.velocity(x, t, c)
            sync()
            plain_s = min(plain_s, time.perf_counter() - t0)
        return {"nfe": nfe, "model_calls": len(sizes), "plain_s": plain_s, "inprocess_s": inprocess_s}


def overhead(setup: BenchSetup, prompts: int, timeout_s: float = 3600.0) -> dict[str, Any]:
    """Plain loop vs in-process vs Ray with one replica: the same searches, the same model, side by side."""
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions

    tasks = setup.tasks(prompts)
    plain: Any = (
        ray.remote(PlainLoop)
        .options(num_cpus=setup.num_cpus, num_gpus=setup.num_gpus)
        .remote(setup.model, setup.sampler, setup.reward, setup.micro_batch)
    )
    try:
        ref: dict[str, Any] = ray.get(plain.measure.remote(tasks), timeout=timeout_s)
    finally:
        ray.kill(plain)
    ex = RayExecutor(
        setup.model,
        setup.sampler,
        setup.reward,
        options=RuntimeOptions(
            replicas=1,
            in_flight=prompts,
            num_cpus=setup.num_cpus,
            num_gpus=setup.num_gpus,
            micro_batch=setup.micro_batch,
            call_timeout_s=timeout_s,
        ),
    )
    try:
        list(ex.run(setup.tasks(1, offset=prompts)))  # warm-up: first-call costs are not the runtime's overhead
        before = ex.stats()[0]
        t0 = time.perf_counter()
        nfe = sum(r.nfe for r in ex.run(tasks))
        ray_s = time.perf_counter() - t0
        after = ex.stats()[0]
    finally:
        ex.close()
    if nfe != ref["nfe"]:
        raise RuntimeError(f"the Ray run spent {nfe} NFE, the in-process run {ref['nfe']}: not the same searches")
    calls = after["model_calls"] - before["model_calls"]
    return {
        "model": setup.model.name,
        "method": type(setup.method).__name__,
        "prompts": prompts,
        "nfe": nfe,
        "model_calls": {"in_process": ref["model_calls"], "ray": calls},
        "mean_batch": {"in_process": nfe / max(1, ref["model_calls"]), "ray": nfe / max(1, calls)},
        "seconds": {"plain_loop": ref["plain_s"], "in_process": ref["inprocess_s"], "ray_1_replica": ray_s},
        "nfe_per_s": {
            "plain_loop": nfe / ref["plain_s"],
            "in_process": nfe / ref["inprocess_s"],
            "ray_1_replica": nfe / ray_s,
        },
        "ratio_ray_vs_plain": ref["plain_s"] / ray_s,
        "ratio_inprocess_vs_plain": ref["plain_s"] / ref["inprocess_s"],
    }


def scaling(
    setup: BenchSetup,
    replica_counts: list[int],
    per_replica: int,
    delay_s: float | None,
    timeout_s: float = 3600.0,
    log=print,
    delay_batch: int | None = None,
) -> list[dict[str, Any]]:
    """Throughput at each replica count. `delay_s`: DelayReplica with that delay per model call of `delay_batch`
    rows (None: per replica call); `delay_s` None: real model replicas."""
    from flowscale_ray.benchmark.delay import DelayReplica
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions
    from flowscale_ray.runtime.replica import ReplicaWorker

    worker = ReplicaWorker if delay_s is None else DelayReplica.with_delay(delay_s)

    rows: list[dict[str, Any]] = []
    for n in replica_counts:
        delay = delay_s is not None
        ex = RayExecutor(
            ComponentSpec("delay", {}) if delay else setup.model,
            setup.sampler,
            ComponentSpec("delay", {}) if delay else setup.reward,
            options=RuntimeOptions(
                replicas=n,
                in_flight=per_replica * n,
                num_cpus=0.01 if delay else setup.num_cpus,
                num_gpus=0.0 if delay else setup.num_gpus,
                micro_batch=delay_batch if delay else setup.micro_batch,
                call_timeout_s=timeout_s,
            ),
            worker=worker,
        )
        try:
            list(ex.run(setup.tasks(n)))  # warm-up: one prompt per replica
            before, rounds0 = ex.stats(), ex.metrics["rounds"]
            cpu0, t0 = time.process_time(), time.perf_counter()
            nfe = sum(r.nfe for r in ex.run(setup.tasks(per_replica * n * 2, offset=n)))
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            after, rounds = ex.stats(), ex.metrics["rounds"] - rounds0
        finally:
            ex.close()
        busy = sum(a["busy_seconds"] - b["busy_seconds"] for a, b in zip(after, before, strict=True))
        calls = sum(a["calls"] - b["calls"] for a, b in zip(after, before, strict=True))
        row = {
            "replicas": n,
            "prompts": per_replica * n * 2,
            "nfe": nfe,
            "wall_s": wall,
            "nfe_per_s": nfe / wall,
            "busy_fraction": busy / (n * wall),
            "rounds": rounds,
            "calls_per_replica": calls / n,
            "nfe_per_call": nfe / max(1, calls),
            "driver_cpu_fraction": cpu / wall,
            "driver_ms_per_round": 1000 * cpu / max(1, rounds),
        }
        rows.append(row)
        log(
            f"{n:>4} replicas: {row['nfe_per_s']:9.0f} NFE/s, busy {row['busy_fraction']:.2f}, "
            f"driver {row['driver_ms_per_round']:.2f} ms/round ({row['driver_cpu_fraction']:.0%} of a core)"
        )
    base = rows[0]["nfe_per_s"] / rows[0]["replicas"]
    for r in rows:
        r["parallel_efficiency"] = r["nfe_per_s"] / (r["replicas"] * base)
    return rows


def cluster_info() -> dict[str, Any]:
    res = ray.cluster_resources()
    return {
        "ray": ray.__version__,
        "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        "cpus": res.get("CPU", 0.0),
        "gpus": res.get("GPU", 0.0),
        "driver_pid": os.getpid(),
    }
