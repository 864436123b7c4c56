"""Virtual replicas (many GPU stand-ins per process, flowscale_ray/benchmark/virtual.py) on a real local Ray: the
real driver schedules them like process replicas, every prompt is handled once and the results equal a
reference run on one process replica, whatever the replica count, the number of hosts or the pipeline depth.
The naive loop computes exactly the rows it asked for. No timing is asserted (figures: benchmarks/results).
"""

import json
import time

import pytest
import ray

from flowscale_ray.benchmark.delay import DelayReplica
from flowscale_ray.benchmark.virtual import NaiveLoop, VirtualHandle, VirtualReplica
from flowscale_ray.cli import main
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution.tasks import SearchTask
from flowscale_ray.prompts import Prompt
from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.search.base import METHODS

SAMPLER = SamplerSpec(steps=6)


def tasks(n: int) -> list[SearchTask]:
    rbf, smc, svdd = METHODS["rbf"], METHODS["smc"], METHODS["svdd"]
    methods = [
        rbf(rbf.Config(n_chains=3, nfe_budget=24)),
        smc(smc.Config(n_particles=4)),
        svdd(svdd.Config(n_chains=2, n_children=3)),
    ]
    return [SearchTask(Prompt(f"p{i}", f"prompt {i}"), methods[i % 3], seed=7) for i in range(n)]


def summary(result):
    o = result.outcome
    return (
        result.nfe,
        result.verifier_calls,
        o.best,
        o.reward,
        o.nfe,
        tuple(o.selected),
        repr(o.records),
        tuple((s.pid, s.reward, s.search_reward, s.lineage) for s in result.selected),
    )


def run(worker, replicas: int, pipeline: int = 2, in_flight: int = 6) -> dict[str, tuple]:
    ex = RayExecutor(
        ComponentSpec("delay", {}),
        SAMPLER,
        ComponentSpec("delay", {}),
        options=RuntimeOptions(
            replicas=replicas, in_flight=in_flight, micro_batch=4, num_cpus=0.01, pipeline=pipeline, slack=1.0
        ),
        worker=worker,
    )
    try:
        out: dict[str, tuple] = {}
        for r in ex.run(tasks(12)):
            assert r.prompt.id not in out, f"{r.prompt.id} handled twice"
            out[r.prompt.id] = summary(r)
        # Every finished search is closed on every replica (closes are fire and forget, and an async host may
        # answer `stats` before it has run them: poll).
        deadline = time.monotonic() + 20
        while (live := sum(s["live_particles"] for s in ex.stats())) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        ex.close()
    assert live == 0
    return out


@pytest.fixture(scope="module")
def reference(local_ray):
    return run(DelayReplica.with_delay(0.0), replicas=1, pipeline=1)


@pytest.mark.parametrize(
    ("replicas", "hosts", "pipeline"),
    [(5, 2, 2), (9, 3, 1)],
)
def test_virtual_replicas_give_the_reference_results(reference, replicas, hosts, pipeline):
    assert len(reference) == 12
    got = run(VirtualReplica.configured(0.001, hosts), replicas=replicas, pipeline=pipeline)
    assert set(got) == set(reference)  # every prompt exactly once
    for pid, want in reference.items():
        assert got[pid] == want, pid


def test_virtual_handles_spread_round_robin_and_speak_for_one_replica(local_ray):
    args = (ComponentSpec("delay", {}), SAMPLER, ComponentSpec("delay", {}), None, 4)
    handles, actors = VirtualReplica.configured(0.001, 2).spawn(args, RuntimeOptions(replicas=5))
    try:
        assert len(actors) == 2 and all(isinstance(h, VirtualHandle) for h in handles)
        assert [h.host for h in handles] == [actors[0], actors[1], actors[0], actors[1], actors[0]]
        loop = NaiveLoop(handles, micro_batch=4)
        assert loop.run(3) == 3 * 5 * 4
        stats = ray.get([h.stats.remote() for h in handles])
        assert [s["calls"] for s in stats] == [3] * 5 and [s["nfe"] for s in stats] == [12] * 5
        assert [s["live_particles"] for s in stats] == [0] * 5  # the loop closes its task
        assert all(s["gpu_seconds"] == pytest.approx(3 * 0.001) for s in stats)  # one micro-batch per call
    finally:
        for a in actors:
            ray.kill(a)


def test_bench_virtual_report_is_consistent(local_ray, tmp_path):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench", "--virtual", "--skip-overhead",
            "--set", "method={name: rbf, n_chains: 2, nfe_budget: 16}",
            "--set", "sampler={preset: vp-sde, steps: 4}",
            "--replicas", "1,4", "--delays", "2", "--delay-batch", "4", "--per-replica", "2", "--waves", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text())["virtual"]
    assert [(r["replicas"], r["delay_ms"]) for r in rows] == [(1, 2.0), (4, 2.0)]
    for r in rows:
        assert r["nfe"] == r["prompts"] * 16 and r["prompts"] == 2 * r["replicas"]
        assert r["parallel_efficiency"] == pytest.approx(r["ideal_s"] / r["wall_s"])
        assert r["ideal_s"] == pytest.approx(r["nfe"] / 4 * 0.002 / r["replicas"])
        assert 0 < r["fill"] <= 1 and r["busy_fraction"] > 0
        assert r["parallel_efficiency"] <= r["busy_fraction"] + 1e-9  # padding only lowers it
        naive = r["naive"]
        assert naive["nfe"] % (4 * r["replicas"]) == 0 and naive["nfe"] >= r["nfe"]
        assert naive["fill"] == pytest.approx(1.0)
        assert set(r["driver_ms_per_round_by_category"]) >= {"submission", "placement", "decisions", "metrics"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--virtual", "--delays", "0"], "--delays: expected comma-separated milliseconds > 0"),
        (["--virtual", "--delays", "5,x"], "--delays: expected comma-separated milliseconds > 0"),
        (["--virtual", "--hosts", "0"], "--hosts: must be >= 1"),
        (["--virtual", "--waves", "0"], "--waves: must be >= 1"),
        (["--virtual", "--delay-batch", "0"], "--delay-batch: must be >= 1 with --virtual"),
    ],
)
def test_bench_virtual_bad_arguments_fail_with_one_line(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
