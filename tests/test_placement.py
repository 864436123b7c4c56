"""Placement (pure): where a search batch's requests run. Searches keep their particles on one replica unless
that replica is clearly overloaded; a wide batch on idle replicas spreads; every request is placed once."""

import pytest

from flowscale_ray.runtime.placement import batch_cost, plan_batch
from flowscale_ray.search.protocol import Batch, Expand, Init, Move, NoiseKey


def expand(pid: int, parent: int) -> Expand:
    return Expand(pid, parent, (Move(0.5, NoiseKey(0, 1, pid)),))


def placed(assignment) -> list[int]:
    return sorted(req.pid for reqs in assignment.requests.values() for req in reqs)


def test_a_searchs_inits_start_together_on_the_least_loaded_replica():
    batch = Batch(inits=tuple(Init(i, NoiseKey(i, 0, 0)) for i in range(2)), expands=())
    loads = [30.0, 4.0, 28.0]
    out = plan_batch(batch, {}, loads, slack=8)
    assert list(out.requests) == [1] and placed(out) == [0, 1] and not out.copies
    assert loads == [30.0, 6.0, 28.0]


def test_busy_replicas_with_similar_loads_do_not_shuffle_particles():
    """Steady state: every replica has a call's rows in progress; loads differ by a fraction of that."""
    batch = Batch(inits=(), expands=tuple(expand(10 + i, i % 2) for i in range(6)))
    loads = [40.0, 31.0, 36.0, 29.0]
    out = plan_batch(batch, {0: {0}, 1: {0}}, loads, slack=8)
    assert list(out.requests) == [0] and not out.copies and placed(out) == list(range(10, 16))


def test_a_wide_batch_on_idle_replicas_spreads_and_copies_its_parents():
    batch = Batch(inits=(), expands=tuple(expand(100 + i, i % 2) for i in range(50)))
    loads = [0.0, 0.0, 0.0, 0.0]
    out = plan_batch(batch, {0: {0}, 1: {0}}, loads, slack=2)
    assert placed(out) == list(range(100, 150))  # every request exactly once
    assert set(out.requests) == {0, 1, 2, 3}
    assert max(loads) - min(loads) <= 2 + 0.5 * min(loads) + 1  # within the rule's tolerance (+ one request)
    assert {(p, src) for p, src, _ in out.copies} <= {(0, 0), (1, 0)}
    assert len(out.copies) == len({(p, dst) for p, _, dst in out.copies})  # each parent copied once per replica
    for p, _, dst in out.copies:  # a copy goes where a child of that parent runs
        assert any(r.parent == p for r in out.requests[dst])


def test_batch_cost_counts_velocity_rows():
    two_steps = Expand(5, 0, (Move(0.6, NoiseKey(0, 1, 0)), Move(0.3, NoiseKey(0, 2, 0))))
    renoise = Expand(6, 0, (Move(0.6, NoiseKey(0, 1, 0)), Move(0.9, NoiseKey(0, 1, 1), renoise=True)))
    batch = Batch(inits=(Init(1, NoiseKey(0, 0, 0)),), expands=(expand(4, 0), two_steps, renoise))
    assert batch_cost(batch) == 1 + 1 + 2 + 1


def test_delay_replica_sleeps_once_per_micro_batch_of_rows():
    """The GPU stand-in: a fixed time per model call of a fixed shape (padded), or per replica call."""
    from flowscale_ray.benchmark.delay import DelayReplica
    from flowscale_ray.core.dynamics import SamplerSpec

    shaped = DelayReplica(None, SamplerSpec(), None, None, micro_batch=8, delay_s=0.05)
    assert [shaped._delay(rows) for rows in (1, 8, 9, 24)] == pytest.approx([0.05, 0.05, 0.1, 0.15])
    per_call = DelayReplica(None, SamplerSpec(), None, None, micro_batch=None, delay_s=0.05)
    assert per_call._delay(100) == 0.05
    built = DelayReplica.with_delay(0.02)(None, SamplerSpec(), None, None, micro_batch=4)  # as the driver builds it
    assert isinstance(built, DelayReplica) and built._delay(5) == pytest.approx(0.04)


def test_assignment_rows_are_the_cost_of_each_replicas_requests():
    batch = Batch(inits=(), expands=tuple(expand(100 + i, i % 2) for i in range(50)))
    out = plan_batch(batch, {0: {0}, 1: {0}}, [0.0, 0.0, 0.0, 0.0], slack=2)
    for r, reqs in out.requests.items():
        assert out.rows[r] == batch_cost(Batch(inits=(), expands=tuple(reqs)))
