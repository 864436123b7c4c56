"""vt's local search at the end (`polish`, flowscale_ray.search.local): exact NFE against the plan, the engine and
the model's own counter; what a try is (renoise back `polish_depth` grid steps, denoise again); the pick only
ever improves; `polish: 0` is vt as before, request for request; settings and budgets refused with one line."""

from __future__ import annotations

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.core.timegrid import time_grid
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models.gaussian_mixture import gmm2d
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.search.local import TRY_CHAIN_BASE, local_nfe
from flowscale_ray.search.protocol import STREAM_RENOISE, SearchContext
from flowscale_ray.search.verifier_threshold import VerifierThreshold, VTConfig
from tests.helpers import ScriptedRun
from tests.test_adaptive_methods import keyed_rewards

GRID = time_grid("uniform", 10)


def vt(**kw):
    return VerifierThreshold(VTConfig(**kw))


def tries_of(run):
    return [e for b in run.batches for e in b.expands if e.moves[0].renoise]


@pytest.mark.parametrize(
    "settings",
    [
        {"polish": 0.5},
        {"polish": 0.5, "nfe_budget": 300, "n_chains": 8, "chain_nfe": 0},
        {"polish": 0.3, "polish_depth": 4, "polish_width": 3, "nfe_budget": 97, "n_chains": 2},
        {"polish": 0.05, "polish_depth": 2, "nfe_budget": 61, "n_chains": 3, "chain_nfe": 0},
    ],
)
@pytest.mark.parametrize("steps", [10, 5])
def test_budget_is_spent_exactly_and_split_as_planned(settings, steps):
    grid = time_grid("uniform", steps)
    method = vt(**settings)
    c = method.config
    if c.polish_depth > steps - 1:
        with pytest.raises(ValueError, match="polish_depth"):
            method.planned_nfe(SearchContext(grid=grid))
        return
    run = ScriptedRun(method, grid, keyed_rewards(steps))
    out = run.run()
    assert out.nfe == run.nfe == method.planned_nfe(SearchContext(grid=grid)) == c.nfe_budget
    kept = local_nfe(c.nfe_budget, c.polish, c.polish_depth)
    assert kept % c.polish_depth == 0 and kept <= c.polish * c.nfe_budget
    tries = tries_of(run)
    assert len(tries) * c.polish_depth == kept
    for t in tries:  # back `depth` grid steps with the forward kernel, then the grid's steps down to 0
        assert t.moves[0].s_to == grid[steps - c.polish_depth] and t.moves[0].noise.stream == STREAM_RENOISE
        assert [m.s_to for m in t.moves[1:]] == list(grid[steps - c.polish_depth + 1 :])
        assert not any(m.renoise for m in t.moves[1:])
    keys = [(m.noise.chain, m.noise.step, m.noise.stream) for t in tries for m in t.moves]
    assert len(set(keys)) == len(keys) and min(k[0] for k in keys) >= TRY_CHAIN_BASE
    assert out.best in run.live and out.selected[0] == out.best and set(out.selected) <= run.live
    polish_records = [r for r in out.records if r.extra.get("polish")]
    assert sum(r.nfe for r in polish_records) == kept and sum(r.candidates for r in polish_records) == len(tries)


def test_tries_start_from_the_current_best_and_replace_it_only_when_strictly_better():
    rewards = {}

    def reward(pid, parent, s, req):
        if req.__class__.__name__ == "Expand" and req.moves[0].renoise:
            r = [1.0, 3.0, 3.0, 2.0, 3.0, 5.0][len(rewards) % 6]  # a tie with the best (3.0) must not replace it
            rewards[pid] = r
            return r
        return 0.0

    method = vt(n_chains=1, nfe_budget=100, polish=0.4, polish_depth=2, polish_width=2)
    run = ScriptedRun(method, GRID, reward)
    out = run.run()
    tries = tries_of(run)
    batches = [[e for e in b.expands if e.moves[0].renoise] for b in run.batches]
    batches = [b for b in batches if b]
    assert [len(b) for b in batches] == [2] * 10
    # batch 1: (1, 3) -> 3 replaces the pick (0); batch 2: (3, 2) -> tie, kept; batch 3: (3, 5) -> 5 replaces
    assert batches[1][0].parent == batches[0][1].pid and batches[2][0].parent == batches[0][1].pid
    assert batches[3][0].parent == batches[2][1].pid
    assert out.best == max(tries, key=lambda e: (rewards[e.pid], -e.pid)).pid and out.reward == 5.0
    polish_records = [r for r in out.records if r.extra.get("polish")]
    assert [r.extra["improved"] for r in polish_records][:3] == [True, False, True]
    assert not any(r.accepted for r in polish_records)  # not budget forcing's accepts (metrics count those)


def test_polish_zero_is_vt_request_for_request():
    a = ScriptedRun(vt(n_chains=3, nfe_budget=211, chain_nfe=0), GRID, keyed_rewards(1))
    b = ScriptedRun(vt(n_chains=3, nfe_budget=211, chain_nfe=0, polish=0.0, polish_depth=5), GRID, keyed_rewards(1))
    assert a.run() == b.run()
    assert [x.expands for x in a.batches] == [x.expands for x in b.batches]


def test_nfe_is_audited_against_the_engine_and_the_model():
    method = vt(n_chains=2, nfe_budget=60, polish=0.5, polish_depth=2)
    model = gmm2d()
    engine = ParticleEngine(model, SamplerSpec(interpolant="vp", sde=True, grid="uniform"), micro_batch=1)
    ex = InProcessExecutor(engine, build_reward("mode_log_density", {"mode": 2}), in_flight=2)
    results = list(ex.run([SearchTask(Prompt(f"p{i}", ""), method, 0) for i in range(3)]))
    assert all(r.nfe == r.outcome.nfe == 60 for r in results)
    assert model.calls == engine.nfe == 60 * len(results)
    assert not engine.particles and not engine.tasks  # everything released


def test_with_budget_keeps_the_share_for_the_end():
    ctx = SearchContext(grid=GRID)
    method = vt(n_chains=8, chain_nfe=0, polish=0.5).with_budget(300, ctx)
    assert method.config.nfe_budget == 300 and method.config.n_chains == 8 and method.planned_nfe(ctx) == 300
    small = vt(n_chains=8, chain_nfe=0, polish=0.5).with_budget(40, ctx)  # 20 for the chains: 2 of them
    assert small.config.n_chains == 2 and ScriptedRun(small, GRID, keyed_rewards()).run().nfe == 40
    with pytest.raises(ValueError, match="cannot pay"):
        vt(polish=0.5).with_budget(15, ctx)  # 6 kept, 9 left: not one chain (10)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"polish": 1.0}, r"polish: must be in \[0, 1\)"),
        ({"polish": -0.1}, "polish: must be in"),
        ({"polish_depth": 0}, "polish_depth"),
        ({"polish_width": 0}, "polish_width"),
    ],
)
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        VTConfig(**bad)


def test_a_budget_too_small_after_the_share_names_it():
    with pytest.raises(ValueError, match="besides the 48 kept for polish; need at least 128"):
        vt(n_chains=8, chain_nfe=0, nfe_budget=100, polish=0.5).planned_nfe(SearchContext(grid=GRID))


def test_on_ray_the_same_samples_as_in_process(local_ray):
    """The tries' renoise moves run on the replicas as in process: same samples, rewards, lineage and NFE."""
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions
    from flowscale_ray.runtime.messages import ComponentSpec

    spec = SamplerSpec(interpolant="vp", sde=True, steps=6)
    reward = ComponentSpec("negative_squared_distance", {"target": [2.0, 0.0]})
    method = vt(n_chains=2, nfe_budget=40, chain_nfe=0, polish=0.5, polish_depth=2)
    tasks = [SearchTask(Prompt(f"p{i}", "x"), method, seed=i) for i in range(3)]
    inproc = InProcessExecutor(ParticleEngine(gmm2d(), spec), build_reward(reward.name, dict(reward.options)), None, 3)
    ref = {r.prompt.id: r for r in inproc.run(tasks)}
    ex = RayExecutor(
        ComponentSpec("gmm2d", {}), spec, reward, options=RuntimeOptions(replicas=2, in_flight=3, num_cpus=0.5)
    )
    try:
        res = {r.prompt.id: r for r in ex.run(tasks)}
    finally:
        ex.close()
    assert res.keys() == ref.keys()
    for pid, r in res.items():
        assert torch.equal(r.sample, ref[pid].sample), pid
        assert r.reward == ref[pid].reward and r.nfe == r.outcome.nfe == ref[pid].nfe == 40
        assert r.lineage == ref[pid].lineage
    assert any(rec.extra.get("improved") for r in ref.values() for rec in r.outcome.records)
