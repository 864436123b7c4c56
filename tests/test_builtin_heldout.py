"""The held-out CNN counter: loads from safetensors and prefers images with the right counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowscale_ray.builtin import shapes
from flowscale_ray.builtin.heldout import HeldoutCountingReward, load_counter
from flowscale_ray.builtin.train_heldout import main as train_heldout_main
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import REWARDS, build_reward


@pytest.fixture(scope="module")
def reward() -> HeldoutCountingReward:
    return HeldoutCountingReward()


def test_registered(reward: HeldoutCountingReward) -> None:
    assert "counting_heldout" in REWARDS
    assert isinstance(build_reward("counting_heldout", {"mode": "sq_error"}), HeldoutCountingReward)
    with pytest.raises(ValueError, match="mode"):
        HeldoutCountingReward(mode="nope")


def test_true_counts_score_higher(reward: HeldoutCountingReward) -> None:
    prompts = list(shapes.evaluation_prompts()[::2])
    images = torch.stack([shapes.render_prompt(p, seed=i) for i, p in enumerate(prompts)])
    # the same images judged against prompts whose counts are off by one somewhere
    wrong = []
    for p in prompts:
        groups = shapes.parse_prompt(p)
        g = groups[0]
        n = g.count + 1 if g.count < shapes.MAX_COUNT else g.count - 1
        wrong.append(shapes.prompt_text([shapes.Group(n, g.colour, g.shape), *groups[1:]]))
    for mode in ("prob", "log_prob", "sq_error"):
        reward.mode = mode
        right_s, wrong_s = reward(images, prompts), reward(images, wrong)
        assert right_s.shape == (len(prompts),)
        assert (right_s > wrong_s).float().mean() >= 0.9, mode
    reward.mode = "prob"
    assert reward(images, prompts).mean() > 0.8
    predicted = reward.predict_counts(images)
    truth = torch.stack([shapes.counts_vector(shapes.parse_prompt(p)) for p in prompts])
    assert (predicted == truth).all(dim=1).float().mean() >= 0.9


def test_robust_inputs(reward: HeldoutCountingReward) -> None:
    gen = torch.Generator().manual_seed(0)
    batch = torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32), torch.rand(3, 32, 32, generator=gen)])
    batch = torch.cat([batch, torch.full((1, 3, 32, 32), float("nan"))])
    out = reward(batch, ["2 red circles"] * 4)
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert reward(batch[:1], ["1 red circle"]) < 0.5  # blank image: not one red circle
    meta = Prompt("p", "5 red circles", metadata={"counts": {"red circle": 0}})
    assert reward(batch[:1], [meta]) > 0.5  # blank image: no red circle
    big = torch.nn.functional.interpolate(shapes.render_prompt("2 blue squares")[None], scale_factor=2.0)
    assert reward(big, ["2 blue squares"]).item() > 0.5


def test_train_heldout_smoke(tmp_path) -> None:
    out = tmp_path / "counter.safetensors"
    train_heldout_main(["--steps", "2", "--batch", "8", "--threads", "1", "--out", str(out)])
    net = load_counter(out)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, shapes.NUM_CLASSES, shapes.MAX_TOTAL + 1)
    assert np.isfinite(net(torch.rand(1, 3, 32, 32)).detach().numpy()).all()
