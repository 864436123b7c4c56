"""The Ray runtime on a real local Ray: same results as in-process whatever the replicas, batching and prompts
in flight; a killed replica is rebuilt from lineage with identical results; failures are reported, never hung;
a search that raises leaves nothing behind. Also (no Ray): every replica class speaks the replica protocol."""

import inspect
import os
import signal
import threading
import time

import pytest
import ray
import torch

from flowscale_ray.benchmark.delay import DelayReplica
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import Executor, InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.execution.tasks import decision_seed
from flowscale_ray.models.base import FlowModel
from flowscale_ray.models.registry import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.runtime.driver import RayExecutor, RuntimeFailure, RuntimeOptions
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.runtime.protocol import Replica
from flowscale_ray.runtime.replica import ReplicaWorker
from flowscale_ray.search import METHODS

MODEL = ComponentSpec("gmm2d", {})
REWARD = ComponentSpec("mode_log_density", {"mode": 2})
SMALL = {
    "bon": {"n": 8},
    "sop": {"n_chains": 2, "n_children": 3, "substeps": 2},
    "smc": {"n_particles": 8},
    "code": {"n_chains": 2, "n_children": 4, "block": 2},
    "svdd": {"n_chains": 2, "n_children": 5},
    "rbf": {"n_chains": 2, "nfe_budget": 80},
}


# -- a model whose numbers depend on the size of the call they are computed in ------------------------------------
class ShapeSensitive(FlowModel):
    """As GPU and CPU kernels may (another algorithm per batch shape), this model's rows differ when computed in
    calls of another size: the velocity by up to 6e-4, the decoded image by up to 0.04. Pooling that depends on
    the executor, the replicas or a fault then shows in every column unless each call has a fixed size."""

    model_id = "shape-sensitive"
    latent_shape = (3, 6, 6)

    def encode(self, prompts):
        return {"m": torch.tensor([[(len(p) % 5) / 5.0] for p in prompts])}

    def velocity(self, x, t, cond):
        return x - cond["m"].to(x.dtype).view(-1, 1, 1, 1) + 1e-4 * (x.shape[0] % 7)

    def decode(self, x0):
        return torch.sigmoid(2 * x0 + 0.02 * (x0.shape[0] % 3))


def shape_sensitive() -> ShapeSensitive:
    return ShapeSensitive()


def red(samples, prompts):
    return samples[:, 0].mean(dim=(1, 2))


def green(samples, prompts):
    return samples[:, 1].mean(dim=(1, 2))


SENSITIVE = ComponentSpec("tests.test_runtime:shape_sensitive", {})
RED, GREEN = ComponentSpec("tests.test_runtime:red", {}), ComponentSpec("tests.test_runtime:green", {})
SDE = SamplerSpec(interpolant="vp", sde=True, steps=6)


def sensitive_reference(tasks, top_k=2, in_flight=1):
    engine = ParticleEngine(ShapeSensitive(), SDE)
    ex = InProcessExecutor(engine, build_reward(RED.name), build_reward(GREEN.name), in_flight=in_flight, top_k=top_k)
    return {r.prompt.id: r for r in ex.run(tasks)}


def sensitive_ray(tasks, top_k=2, **opts):
    return RayExecutor(SENSITIVE, SDE, RED, GREEN, options=RuntimeOptions(num_cpus=0.5, **opts), top_k=top_k)


def assert_every_column_same(results, ref):
    """Every selected sample of every prompt: the sample, its image, reward, held-out score and search reward,
    its lineage; the prompt's NFE and verifier calls. Bit for bit."""
    assert results.keys() == ref.keys()
    for pid, r in results.items():
        a = ref[pid]
        assert r.nfe == a.nfe and r.verifier_calls == a.verifier_calls, pid
        assert len(r.selected) == len(a.selected) == 2, pid
        for s, t in zip(r.selected, a.selected, strict=True):
            assert torch.equal(s.sample, t.sample) and torch.equal(s.image, t.image), pid
            assert (s.reward, s.held_out, s.search_reward) == (t.reward, t.held_out, t.search_reward), pid
            assert s.lineage == t.lineage and s.pid == t.pid, pid


def run_killing_a_replica(ex, tasks, replica: int = 1, after_rounds: int = 40) -> tuple[dict, bool]:
    """Run `tasks` on `ex` while SIGKILLing one replica's process once the driver has done `after_rounds`
    scheduling rounds; returns the results by prompt id and whether the kill happened. Closes `ex`."""
    victim = ray.get(ex.replicas[replica].pid.remote())
    killed = threading.Event()

    def killer():
        while ex.metrics["rounds"] < after_rounds:
            time.sleep(0.005)
        os.kill(victim, signal.SIGKILL)
        killed.set()

    threading.Thread(target=killer, daemon=True).start()
    try:
        results = {r.prompt.id: r for r in ex.run(tasks)}
    finally:
        ex.close()
    return results, killed.is_set()


def sensitive_tasks(name, n=5):
    cls = METHODS[name]
    method = cls(cls.Config(**SMALL[name]))
    return [SearchTask(Prompt(f"p{i}", "t" * i), method, seed=3) for i in range(n)]


@pytest.mark.parametrize("name", ["bon", "smc", "rbf"])
def test_every_column_is_the_same_whatever_the_pooling_with_the_default_micro_batch(local_ray, name):
    """micro_batch null (the default): in process with 1 or 4 prompts in flight, and on 3 replicas with 4 in
    flight (a prompt's particles spread over replicas), a shape-sensitive model gives the same samples, images,
    rewards, held-out scores, NFE and lineages."""
    tasks = sensitive_tasks(name)
    ref = sensitive_reference(tasks)
    assert_every_column_same(sensitive_reference(tasks, in_flight=4), ref)
    ex = sensitive_ray(tasks, replicas=3, in_flight=4, slack=1)
    try:
        results = {r.prompt.id: r for r in ex.run(tasks)}
    finally:
        ex.close()
    assert_every_column_same(results, ref)


def test_every_column_is_the_same_after_a_replica_is_killed(local_ray):
    """A replica killed mid-run is rebuilt from lineage (particles replayed one request at a time, so in calls of
    other sizes than the first time): every column still equals the fault-free in-process run's."""
    tasks = sensitive_tasks("rbf", n=6)
    ref = sensitive_reference(tasks)
    ex = sensitive_ray(tasks, replicas=2, in_flight=6)
    results, killed = run_killing_a_replica(ex, tasks)
    assert killed and ex.metrics["restarts"] == 1 and ex.metrics["replayed_nfe"] > 0
    assert_every_column_same(results, ref)


def tasks_for(name, n=5):
    cls = METHODS[name]
    method = cls(cls.Config(**SMALL[name]))
    return [SearchTask(Prompt(f"p{i}", "t"), method, seed=3) for i in range(n)]


def reference(tasks, spec):
    ex = InProcessExecutor(ParticleEngine(build_model("gmm2d"), spec), build_reward("mode_log_density", {"mode": 2}))
    return {r.prompt.id: r for r in ex.run(tasks)}


def run_ray(tasks, spec, **opts):
    ex = RayExecutor(MODEL, spec, REWARD, options=RuntimeOptions(num_cpus=0.5, **opts))
    try:
        results = {r.prompt.id: r for r in ex.run(tasks)}
        return results, ex, ex.stats()
    finally:
        ex.close()


def assert_same(results, ref):
    assert results.keys() == ref.keys()
    for pid, r in results.items():
        assert torch.equal(r.sample, ref[pid].sample), pid
        assert r.reward == ref[pid].reward and r.nfe == ref[pid].nfe == r.outcome.nfe
        assert r.lineage == ref[pid].lineage


@pytest.mark.parametrize("name", list(SMALL))
def test_same_results_as_in_process_for_any_replicas_and_batching(local_ray, name):
    spec = SamplerSpec()
    tasks = tasks_for(name)
    ref = reference(tasks, spec)
    for opts in ({"replicas": 1, "in_flight": 1}, {"replicas": 3, "in_flight": 4, "micro_batch": 4}):
        results, _, stats = run_ray(tasks, spec, **opts)
        assert_same(results, ref)
        assert all(s["live_particles"] == 0 for s in stats)  # every particle released
        assert sum(s["nfe"] for s in stats) == sum(r.nfe for r in results.values())


def test_a_single_prompt_is_spread_over_replicas(local_ray):
    tasks = tasks_for("svdd", n=1)
    results, ex, stats = run_ray(tasks, SamplerSpec(), replicas=3, in_flight=1, slack=2)
    assert_same(results, reference(tasks, SamplerSpec()))
    assert ex.metrics["copies"] > 0 and all(s["nfe"] > 0 for s in stats)


def test_killed_replica_is_rebuilt_and_results_are_identical(local_ray):
    spec = SamplerSpec()
    tasks = tasks_for("rbf", n=6)
    ref = reference(tasks, spec)
    ex = RayExecutor(MODEL, spec, REWARD, options=RuntimeOptions(replicas=2, in_flight=6, num_cpus=0.5))
    results, killed = run_killing_a_replica(ex, tasks)
    assert killed
    assert ex.metrics["restarts"] == 1 and ex.metrics["replayed_nfe"] > 0
    assert_same(results, ref)


def test_a_replica_that_keeps_dying_fails_the_run_clearly(local_ray):
    model = ComponentSpec("tests.runtime_models:crashing", {})
    ex = RayExecutor(model, SamplerSpec(), REWARD, options=RuntimeOptions(replicas=1, num_cpus=0.5, max_restarts=2))
    with pytest.raises(RuntimeFailure, match=r"replica 0 failed 3 times \(max_restarts=2\); giving up"):
        list(ex.run(tasks_for("bon", n=1)))
    ex.close()


def test_a_model_that_fails_to_load_fails_at_start_with_its_error(local_ray):
    model = ComponentSpec("tests.runtime_models:broken", {})
    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"failed to start: .*weights folder /models/flux is missing"):
        RayExecutor(model, SamplerSpec(), REWARD, options=RuntimeOptions(replicas=2, num_cpus=0.5))
    assert time.monotonic() - t0 < 60
    with pytest.raises(RuntimeFailure, match="unknown model 'nope'"):
        RayExecutor(ComponentSpec("nope", {}), SamplerSpec(), REWARD, options=RuntimeOptions(num_cpus=0.5))


def test_a_hung_call_times_out_and_the_run_recovers(local_ray, tmp_path):
    model = ComponentSpec("tests.runtime_models:hang_once", {"marker": str(tmp_path / "hung")})
    spec = SamplerSpec()
    tasks = tasks_for("svdd", n=2)
    ex = RayExecutor(model, spec, REWARD, options=RuntimeOptions(replicas=1, num_cpus=0.5, call_timeout_s=3))
    try:
        results = {r.prompt.id: r for r in ex.run(tasks)}
    finally:
        ex.close()
    assert ex.metrics["restarts"] == 1
    assert_same(results, reference(tasks, spec))


def _object_store_used() -> float:
    total = ray.cluster_resources().get("object_store_memory", 0.0)
    free = ray.available_resources().get("object_store_memory", total)
    return total - free


@pytest.mark.slow
def test_memory_stays_flat_over_hundreds_of_prompts(local_ray):
    import psutil

    method = METHODS["svdd"](METHODS["svdd"].Config(n_chains=2, n_children=4))
    tasks = [SearchTask(Prompt(f"p{i:04d}", "t"), method, seed=0) for i in range(400)]
    ex = RayExecutor(
        MODEL, SamplerSpec(steps=4), REWARD, options=RuntimeOptions(replicas=2, in_flight=16, num_cpus=0.5)
    )
    proc = psutil.Process()
    samples = {}
    try:
        for n, _ in enumerate(ex.run(tasks), start=1):
            if n in (100, 250, 400):
                samples[n] = (proc.memory_info().rss, _object_store_used())
        stats = ex.stats()
    finally:
        ex.close()
    growth = samples[400][0] - samples[100][0]
    assert growth < 25 * 2**20, f"driver RSS grew {growth / 2**20:.1f} MiB from 100 to 400 prompts"
    assert samples[400][1] <= samples[100][1] + 2**20, samples  # nothing accumulates in the object store
    assert all(s["live_particles"] == 0 and s["open_tasks"] == 0 for s in stats)


def test_rewards_in_separate_reward_actors(local_ray):
    spec = SamplerSpec()
    tasks = tasks_for("svdd", n=3)
    held = ComponentSpec("negative_distance", {"target": [0.5, -3.5]})
    ex = RayExecutor(
        MODEL,
        spec,
        REWARD,
        held,
        options=RuntimeOptions(replicas=2, in_flight=3, num_cpus=0.3, reward_actors=2, reward_num_cpus=0.3),
    )
    try:
        results = {r.prompt.id: r for r in ex.run(tasks)}
        rstats = ex.rewards.stats()
    finally:
        ex.close()
    assert_same(results, reference(tasks, spec))
    assert all(r.held_out is not None for r in results.values())
    assert all(s["calls"] > 0 for s in rstats)  # both reward actors scored


def test_run_can_be_called_again_on_the_same_executor(local_ray):
    """Task keys are unique for the executor's life: a second run() never meets the first one's state."""
    spec = SamplerSpec()
    first, second = tasks_for("svdd", n=3), tasks_for("rbf", n=3)
    ex = RayExecutor(MODEL, spec, REWARD, options=RuntimeOptions(replicas=2, in_flight=3, num_cpus=0.5))
    try:
        gen = ex.run(first)
        next(gen)
        gen.close()  # abandoned mid-run: its tasks are closed on the replicas
        again = {r.prompt.id: r for r in ex.run(second)}
        stats = ex.stats()
    finally:
        ex.close()
    assert_same(again, reference(second, spec))
    assert all(s["open_tasks"] == 0 for s in stats)


def test_flowscale_run_on_ray_writes_the_same_dataset(local_ray, tmp_path):
    """The whole job path (config -> executor -> Parquet) gives the same rows on Ray as in-process, top-k too."""
    import pyarrow.dataset as ds
    import yaml

    from flowscale_ray.cli import main
    from flowscale_ray.io.schema import NAMES, WALL_CLOCK

    doc = {
        "name": "cmp",
        "model": {"name": "tests.test_runtime:shape_sensitive"},
        "sampler": {"preset": "vp-sde", "steps": 6},
        "method": {"name": "smc", "n_particles": 6},
        "reward": {"name": "tests.test_runtime:red"},
        "held_out": {"name": "tests.test_runtime:green"},
        "prompts": ["a", "bb", "ccc"],
        "output": {"dir": str(tmp_path / "out"), "top_k": 2},
    }
    tables = {}
    for kind, executor in (
        ("inprocess", {"kind": "inprocess"}),
        ("ray", {"kind": "ray", "replicas": 2, "num_cpus": 0.5}),
    ):
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump({**doc, "executor": executor, "output": {**doc["output"], "run_id": kind}}))
        assert main(["run", str(path)]) == 0
        table = ds.dataset(str(tmp_path / "out" / kind / "data"), format="parquet").to_table()
        compared = [c for c in NAMES if c not in WALL_CLOCK and c != "run_id"]
        tables[kind] = sorted(table.select(compared).to_pylist(), key=lambda r: (r["prompt_id"], r["rank"]))
    assert tables["ray"] == tables["inprocess"] and len(tables["ray"]) == 6
    assert all(r["image"]["bytes"] and r["held_out"] is not None for r in tables["ray"])


class FailsOnBad(METHODS["rbf"]):
    """RBF whose search raises after its first batch for the prompt with id "bad" (its decision seed)."""

    def __init__(self, config, bad_seed):
        super().__init__(config)
        self.bad_seed = bad_seed

    def search(self, ctx, seed):
        inner = super().search(ctx, seed)
        if seed != self.bad_seed:
            return (yield from inner)
        yield next(inner)
        raise ValueError("the search for prompt bad failed")


def test_a_search_that_raises_is_discarded_and_the_executor_runs_again(local_ray):
    spec = SamplerSpec()
    method = FailsOnBad(METHODS["rbf"].Config(**SMALL["rbf"]), bad_seed=decision_seed(3, "bad"))
    good = [SearchTask(Prompt(f"p{i}", "t"), method, seed=3) for i in range(4)]
    with_bad = [*good[:2], SearchTask(Prompt("bad", "t"), method, seed=3), *good[2:]]
    ex = RayExecutor(MODEL, spec, REWARD, options=RuntimeOptions(replicas=2, in_flight=5, num_cpus=0.5))
    try:
        assert isinstance(ex, Executor)
        with pytest.raises(ValueError, match="the search for prompt bad failed"):
            list(ex.run(with_bad))
        ex.discard_unfinished()
        stats = ex.stats()
        assert all(s["open_tasks"] == 0 and s["live_particles"] == 0 for s in stats), stats
        suspended = ex.run(good)  # a run left suspended mid-way: discard_unfinished drops it too
        next(suspended)
        ex.discard_unfinished()
        assert all(s["open_tasks"] == 0 and s["live_particles"] == 0 for s in ex.stats())
        suspended.close()
        again = {r.prompt.id: r for r in ex.run(good)}
    finally:
        ex.close()
    fresh, _, _ = run_ray(good, spec, replicas=2, in_flight=5)
    assert_same(again, fresh)
    assert_same(again, reference(good, spec))


@pytest.mark.parametrize("cls", [ReplicaWorker, DelayReplica])
def test_replica_classes_implement_the_replica_protocol(cls):
    """The production replica and the benchmarks' stand-in have every method the driver calls, alike."""
    methods = [n for n, v in vars(Replica).items() if not n.startswith("_") and inspect.isfunction(v)]
    assert {"ready", "run", "replay", "export", "finalize", "close", "stats"} <= set(methods)
    for name in methods:
        assert inspect.isfunction(getattr(cls, name, None)), f"{cls.__name__} has no method {name}"
        want = inspect.signature(getattr(Replica, name)).parameters.values()
        got = inspect.signature(getattr(cls, name)).parameters.values()
        shape = lambda params: [  # noqa: E731  (ray.remote adds a _ray_trace_ctx keyword to the methods)
            (p.name, p.kind, p.default is inspect.Parameter.empty) for p in params if p.name != "_ray_trace_ctx"
        ]
        assert shape(got) == shape(want), (cls.__name__, name)
    inspect.signature(cls).bind(MODEL, SamplerSpec(), REWARD, None, None)  # how the driver builds a replica
    assert "delay_per_call" not in inspect.signature(ReplicaWorker).parameters
    assert not hasattr(ReplicaWorker, "crash")


def test_runtime_options_from_the_jobs_executor_section():
    from flowscale_ray.config import ExecutorConfig

    cfg = ExecutorConfig(
        kind="ray",
        replicas=3,
        in_flight=5,
        micro_batch=4,
        num_cpus=0.5,
        num_gpus=1.0,
        call_timeout_s=30.0,
        max_restarts=1,
        reward_actors=2,
    )
    assert RuntimeOptions.from_config(cfg) == RuntimeOptions(
        replicas=3,
        in_flight=5,
        micro_batch=4,
        num_cpus=0.5,
        num_gpus=1.0,
        call_timeout_s=30.0,
        max_restarts=1,
        reward_actors=2,
    )
