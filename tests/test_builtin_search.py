"""End to end on the built-in model: RBF at a modest budget raises the counting reward over plain sampling."""

import torch

from flowscale_ray.builtin import counting, shapes
from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.search import METHODS


def test_rbf_raises_mean_reward_over_plain_sampling():
    model, reward = build_model("shapes"), build_reward("counting")
    prompts = [Prompt(f"eval-{i}", t) for i, t in enumerate(shapes.evaluation_prompts()[:6])]

    def run(name, settings, spec):
        method = METHODS[name](METHODS[name].Config(**settings))
        ex = InProcessExecutor(ParticleEngine(model, spec), reward, in_flight=len(prompts))
        results = sorted(ex.run([SearchTask(p, method, seed=0) for p in prompts]), key=lambda r: r.prompt.id)
        return torch.tensor([r.reward for r in results]), torch.stack([r.image for r in results])

    base, base_images = run("base", {}, SamplerSpec(interpolant="linear", sde=False))
    rbf, rbf_images = run("rbf", {"nfe_budget": 100}, SamplerSpec())
    assert rbf.mean() > base.mean(), (rbf, base)
    assert counting.accuracy(rbf_images, prompts).sum() >= counting.accuracy(base_images, prompts).sum()
