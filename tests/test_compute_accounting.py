"""Verifier calls are counted exactly: what a TaskResult reports is what the reward was asked to score."""

from __future__ import annotations

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import Reward, build_reward
from flowscale_ray.search import METHODS

SETTINGS = {
    "base": {},
    "bon": {"n": 5},
    "smc": {"n_particles": 6},
    "svdd": {"n_chains": 2, "n_children": 3},
    "code": {"n_chains": 2, "n_children": 3},
    "rbf": {"n_chains": 2, "nfe_budget": 40},
    "sop": {},
    "abf": {"nfe_budget": 40},
    "vt": {"nfe_budget": 40},
}


class Counted(Reward):
    """Counts the rows it scores."""

    def __init__(self, inner: Reward) -> None:
        self.inner, self.name, self.rows = inner, inner.name, 0

    def __call__(self, samples: torch.Tensor, prompts) -> torch.Tensor:
        self.rows += samples.shape[0]
        return self.inner(samples, prompts)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_verifier_calls_are_the_rows_the_reward_scored(name):
    reward = Counted(build_reward("mode_log_density", {"mode": 2}))
    held = Counted(build_reward("negative_distance", {"target": [0.5, -3.5]}))
    engine = ParticleEngine(build_model("gmm2d"), SamplerSpec(interpolant="linear", sde=True, steps=6))
    ex = InProcessExecutor(engine, reward, held, in_flight=3, top_k=2)
    method = METHODS[name](METHODS[name].Config(**SETTINGS[name]))
    results = list(ex.run([SearchTask(Prompt(f"p{i}", "x"), method, seed=i) for i in range(4)]))
    assert sum(r.verifier_calls for r in results) == reward.rows  # the held-out score is not the verifier's cost
    assert all(r.verifier_calls >= len(r.selected) for r in results)
    assert held.rows == sum(len(r.selected) for r in results)
