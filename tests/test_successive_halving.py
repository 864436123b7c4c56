"""Successive halving (`sh`): exact NFE, the pruning rule, Best-of-N when nothing is pruned, budgets."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.core.timegrid import time_grid
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.search import METHODS
from flowscale_ray.search.protocol import SearchContext
from flowscale_ray.search.successive_halving import SuccessiveHalving, SuccessiveHalvingConfig
from tests.helpers import ScriptedRun


def sh(**kw) -> SuccessiveHalving:
    return SuccessiveHalving(SuccessiveHalvingConfig(**kw))


def trajectory_rewards(seed=0):
    """A reward that depends on the trajectory (the noise key's chain) and the time only."""

    def reward(pid, parent, s, req):
        chain = req.noise.chain if parent is None else req.moves[-1].noise.chain
        return random.Random(f"{seed}-{chain}-{s}").gauss(0.0, 1.0)

    return reward


CONFIGS = [
    {"n": 16},
    {"n": 9, "checkpoints": (0.2, 0.5), "keep": 0.5},
    {"n": 7, "checkpoints": (0.1, 0.4, 0.7), "keep": 0.3, "min_keep": 2},
    {"n": 5, "keep": 1.0},
    {"nfe_budget": 123, "checkpoints": (0.3,), "keep": 0.25},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("steps", [10, 4, 2, 1])
def test_reported_nfe_equals_spent_and_planned(cfg, steps):
    grid = time_grid("sqrt", steps)
    method = sh(**cfg)
    run = ScriptedRun(method, grid, trajectory_rewards(steps))
    out = run.run()
    assert out.nfe == run.nfe == method.planned_nfe(SearchContext(grid=grid))
    if "nfe_budget" in cfg:
        assert out.nfe <= cfg["nfe_budget"]
    assert out.best in run.live and out.selected[0] == out.best and set(out.selected) <= run.live
    ends = {e.moves[-1].s_to for b in run.batches for e in b.expands if e.pid in out.selected}
    assert ends <= {grid[-2]}  # every surviving trajectory ran to s_{M-1}


def test_pruning_keeps_the_best_trajectories_at_each_checkpoint():
    grid = time_grid("uniform", 10)
    rewards: dict[int, float] = {}
    fn = trajectory_rewards(7)

    def reward(pid, parent, s, req):
        rewards[pid] = fn(pid, parent, s, req)
        return rewards[pid]

    method = sh(n=12, checkpoints=(0.2, 0.5), keep=0.5)
    run = ScriptedRun(method, grid, reward)
    out = run.run()
    legs = [b.expands for b in run.batches if b.expands]
    assert [len(leg) for leg in legs] == [12, 6, 3]
    for before, after in itertools.pairwise(legs):
        ranked = sorted((e.pid for e in before), key=lambda p: -rewards[p])
        assert {e.parent for e in after} == set(ranked[: len(after)])
    assert out.reward == max(rewards[e.pid] for e in legs[-1])
    assert all(e.score for leg in legs for e in leg) and not any(i.score for b in run.batches for i in b.inits)


def test_keep_one_is_best_of_n_on_the_real_engine():
    """Nothing pruned: the same trajectories, the same selected sample, the same NFE as Best-of-N (ODE and SDE)."""
    reward = build_reward("mode_log_density", {"mode": 2})
    for spec in (
        SamplerSpec(interpolant="linear", sde=False, steps=6),
        SamplerSpec(interpolant="vp", sde=True, steps=6),
    ):
        out = {}
        methods = {"sh": sh(n=6, keep=1.0, checkpoints=(0.3, 0.6)), "bon": METHODS["bon"](METHODS["bon"].Config(n=6))}
        for name, method in methods.items():
            ex = InProcessExecutor(ParticleEngine(build_model("gmm2d"), spec), reward)
            out[name] = next(iter(ex.run([SearchTask(Prompt("p", "x"), method, seed=11)])))
        assert out["sh"].nfe == out["bon"].nfe == 36
        assert out["sh"].reward == out["bon"].reward
        assert torch.equal(out["sh"].sample, out["bon"].sample)
        assert out["sh"].verifier_calls > out["bon"].verifier_calls  # scored at the checkpoints too


def test_with_budget_takes_the_largest_n_that_fits():
    ctx = SearchContext(grid=time_grid("uniform", 10))
    for nfe in (10, 37, 100, 301, 1000):
        method = sh(checkpoints=(0.3,), keep=0.25).with_budget(nfe, ctx)
        n = method._n(ctx)
        assert method.planned_nfe(ctx) <= nfe < method._cost(n + 1, ctx)
    with pytest.raises(ValueError, match="cannot pay one trajectory"):
        sh().with_budget(9, ctx)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"keep": 0}, "keep"),
        ({"keep": 1.5}, "keep"),
        ({"checkpoints": (0.5, 0.2)}, "checkpoints"),
        ({"checkpoints": (1.0,)}, "checkpoints"),
        ({"n": 0}, "n"),
        ({"nfe_budget": 0}, "nfe_budget"),
    ],
)
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        sh(**kw)
