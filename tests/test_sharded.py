"""ShardedExecutor: one job over K drivers (each a Ray actor with its own virtual replicas) on a real local Ray:
every prompt is handled once, by the shard its id hashes to, with the results of one driver."""

import pytest

from flowscale_ray.benchmark.virtual import VirtualReplica
from flowscale_ray.observe.recorder import Recorder
from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.runtime.sharded import ShardedExecutor, shard_of
from tests.test_virtual_replicas import SAMPLER, summary, tasks

ARGS = (ComponentSpec("delay", {}), SAMPLER, ComponentSpec("delay", {}))
OPTIONS = RuntimeOptions(replicas=2, in_flight=3, micro_batch=4, num_cpus=0.01, slack=1.0)


def results(ex) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    try:
        for r in ex.run(tasks(14)):
            assert r.prompt.id not in out, f"{r.prompt.id} handled twice"
            out[r.prompt.id] = summary(r)
    finally:
        ex.close()
    return out


def test_shard_of_is_stable_and_spreads():
    ids = [f"p{i}" for i in range(1000)]
    assert [shard_of(p, 3) for p in ids] == [shard_of(p, 3) for p in ids]
    counts = [sum(shard_of(p, 2) == k for p in ids) for k in range(2)]
    assert min(counts) > 400  # binomial(1000, 1/2): 6 standard deviations below the mean is < 405
    assert {shard_of(p, 1) for p in ids} == {0}


def test_two_drivers_give_one_drivers_results(local_ray):
    worker = VirtualReplica.configured(0.001, 1)
    one = results(RayExecutor(*ARGS, options=OPTIONS, worker=worker))
    sharded = ShardedExecutor(*ARGS, shards=2, options=OPTIONS, worker=worker)
    sharded.recorder = seen = Seen()
    assert sharded.model_id == "delay" and sharded.context.grid == SAMPLER.grid_times()
    two = results(sharded)
    assert len(one) == 14 and set(two) == set(one)
    for pid, want in one.items():
        assert two[pid] == want, pid
    # The shards' runtime hooks reach the caller's recorder: every NFE, and calls from both drivers' replicas.
    assert seen.nfe == sum(v[0] for v in two.values()) == sum(v[0] for v in one.values())
    assert {r.split(".")[0] for r in seen.calls} == {"0", "1"} and sum(seen.calls.values()) > 0


class Seen(Recorder):
    def __init__(self) -> None:
        self.nfe, self.calls = 0, {}

    def batch_evaluated(self, nfe, rewards) -> None:
        self.nfe += nfe

    def replica_call(self, replica, stats) -> None:
        self.calls[replica] = self.calls.get(replica, 0) + 1


def test_bad_shard_count():
    with pytest.raises(ValueError, match="shards must be >= 1"):
        ShardedExecutor(*ARGS, shards=0)


@pytest.mark.parametrize(
    ("executor", "field", "message"),
    [
        ({"drivers": 2}, "executor.drivers", "only used with kind: ray"),
        ({"kind": "ray", "replicas": 3, "drivers": 2}, "executor.replicas", r"multiple of drivers \(2\)"),
        ({"kind": "ray", "replicas": 2, "reward_actors": 1, "drivers": 2}, "executor.reward_actors", "multiple"),
        ({"kind": "ray", "drivers": 0}, "executor.drivers", ""),
    ],
)
def test_drivers_in_a_job_file_are_checked(tmp_path, executor, field, message):
    from flowscale_ray.config import ConfigError, load_job
    from tests.test_io_run import job_doc

    with pytest.raises(ConfigError, match=field.replace(".", r"\.") + ".*" + message):
        load_job(job_doc(tmp_path, executor=executor))


def test_a_driver_shard_that_dies_is_restarted_and_its_searches_run_again(local_ray):
    """Killing one driver actor mid-run fails the searches it had in flight (RuntimeFailure); Ray restarts it with
    fresh replicas, and running the unfinished prompts again gives one driver's results for every prompt."""
    import ray

    from flowscale_ray.runtime.options import RuntimeFailure

    worker = VirtualReplica.configured(0.02, 1)
    want = results(RayExecutor(*ARGS, options=OPTIONS, worker=worker))
    ex = ShardedExecutor(*ARGS, shards=2, options=OPTIONS, worker=worker)
    todo, got = {t.prompt.id: t for t in tasks(14)}, {}
    try:
        with pytest.raises(RuntimeFailure, match="driver shard 0 died"):
            for r in ex.run(list(todo.values())):
                got[r.prompt.id] = summary(r)
                if len(got) == 1:
                    ray.kill(ex.shards[0], no_restart=False)
        ex.discard_unfinished()
        for r in ex.run([t for pid, t in todo.items() if pid not in got]):
            assert r.prompt.id not in got
            got[r.prompt.id] = summary(r)
    finally:
        ex.close()
    assert got == want
