"""ShardedExecutor: one job over K drivers (each a Ray actor with its own virtual replicas) on a real local Ray:
every prompt is handled once, by the shard its id hashes to, with the results of one driver."""

import pytest

from flowscale_ray.benchmark.virtual import VirtualReplica
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
    assert sharded.model_id == "delay" and sharded.context.grid == SAMPLER.grid_times()
    two = results(sharded)
    assert len(one) == 14 and set(two) == set(one)
    for pid, want in one.items():
        assert two[pid] == want, pid


def test_bad_shard_count():
    with pytest.raises(ValueError, match="shards must be >= 1"):
        ShardedExecutor(*ARGS, shards=0)
