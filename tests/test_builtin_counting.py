"""The pixel-counting reward on hand-made images with known counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowscale_ray.builtin import counting, shapes
from flowscale_ray.builtin.counting import CountingReward, count_objects, prompt_targets
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import REWARDS, build_reward

RED = shapes.PALETTE["red"]
BLUE = shapes.PALETTE["blue"]


def canvas() -> torch.Tensor:
    return torch.zeros(3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)


def paint(img: torch.Tensor, colour: tuple[float, float, float], r: int, c: int, shape: str) -> None:
    mask = torch.from_numpy(shapes.sprite(shape))
    region = img[:, r : r + shapes.OBJECT_BOX, c : c + shapes.OBJECT_BOX]
    for ch in range(3):
        region[ch][mask] = colour[ch]


def idx(name: str) -> int:
    return shapes.class_index(*shapes.parse_class_name(name))


def test_hand_made_counts() -> None:
    img = canvas()
    paint(img, RED, 1, 1, "circle")
    paint(img, RED, 1, 12, "circle")
    paint(img, RED, 12, 1, "square")
    paint(img, BLUE, 20, 20, "square")
    counts = count_objects(img[None])[0]
    expected = torch.zeros(shapes.NUM_CLASSES, dtype=torch.int64)
    expected[idx("red circle")] = 2
    expected[idx("red square")] = 1
    expected[idx("blue square")] = 1
    assert torch.equal(counts, expected)
    reward = CountingReward()
    prompts = ["2 red circles and 1 blue square", "3 red circles", "2 red circles and 3 blue squares"]
    r = reward(img[None].expand(3, -1, -1, -1), prompts)
    assert r.tolist() == [0.0, -1.0, -4.0]
    assert reward.accuracy(img[None].expand(3, -1, -1, -1), prompts).tolist() == [1.0, 0.0, 0.0]


def test_touching_objects_merge_and_specks_are_ignored() -> None:
    img = canvas()
    img[0, 5:11, 5:17] = RED[0]  # one long blob: one object
    img[0, 20, 20] = 1.0  # a speck
    img[2, 25:27, 3:5] = 1.0  # a 4-pixel blue speck
    counts = count_objects(img[None])[0]
    assert int(counts.sum()) == 1


def test_blank_saturated_noise_nan() -> None:
    gen = torch.Generator().manual_seed(0)
    batch = torch.stack(
        [
            torch.zeros(3, 32, 32),
            torch.ones(3, 32, 32),
            torch.rand(3, 32, 32, generator=gen),
            torch.full((3, 32, 32), float("nan")),
            torch.randn(3, 32, 32, generator=gen) * 5.0,  # out of range: clamped
        ]
    )
    counts = count_objects(batch)
    assert counts.shape == (5, shapes.NUM_CLASSES)
    assert counts[:2].sum() == 0 and counts[3].sum() == 0
    r = CountingReward()(batch, ["3 red circles"] * 5)
    assert r.shape == (5,) and torch.isfinite(r).all()
    assert r[0] == -9.0 and r[1] == -9.0
    # all-red image: one huge component, counted once
    red = torch.tensor(RED).view(3, 1, 1).expand(3, 32, 32)
    assert int(count_objects(red[None]).sum()) == 1


def test_rendered_batch_is_exact_also_with_mild_noise() -> None:
    batch = shapes.sample_batch(32, np.random.default_rng(7))
    reward = CountingReward()
    r, exact, counts = reward.scores(batch.images, batch.texts)
    assert torch.equal(counts, batch.counts)
    assert r.eq(0).all() and exact.eq(1).all()
    gen = torch.Generator().manual_seed(1)
    noisy = (batch.images + 0.08 * torch.randn(batch.images.shape, generator=gen)).clamp(0, 1)
    assert reward.accuracy(noisy, batch.texts).mean() >= 0.9


def test_other_dtypes_and_sizes() -> None:
    img = shapes.render_prompt("2 blue squares and 3 yellow circles", seed=3)
    assert counting.accuracy(img[None].double(), ["2 blue squares and 3 yellow circles"]).item() == 1.0
    big = torch.nn.functional.interpolate(img[None], scale_factor=2, mode="nearest")
    assert count_objects(big)[0].sum() == 5
    with pytest.raises(ValueError):
        count_objects(torch.zeros(2, 32, 32))


def test_metadata_overrides_text() -> None:
    img = shapes.render_prompt("2 blue squares", seed=0)[None]
    plain = Prompt("p", "3 red circles")
    meta = Prompt("p", "3 red circles", metadata={"counts": {"blue squares": 2}})
    zero = Prompt("p", "anything", metadata={"counts": {"blue square": 2, "red circle": 0}})
    reward = CountingReward()
    assert reward(img, [plain]).item() == -9.0
    assert reward(img, [meta]).item() == 0.0
    assert reward(img, [zero]).item() == 0.0
    targets, scored = prompt_targets([zero])
    assert scored[0].sum() == 2 and targets[0, idx("blue square")] == 2
    # penalize_others scores unnamed classes with target 0
    assert CountingReward(penalize_others=True)(img, ["1 blue square"]).item() == -1.0
    assert CountingReward(penalize_others=True)(img, ["1 red circle"]).item() == -5.0


def test_registered_and_table() -> None:
    assert "counting" in REWARDS
    reward = build_reward("counting", {"min_area": 8})
    assert isinstance(reward, CountingReward) and reward.min_area == 8
    img = shapes.render_prompt("1 red circle", seed=0)[None]
    table = counting.count_table(img, ["1 red circle"])
    assert "1 red circle" in table and "yes" in table


def test_match_shape_false_pools_shapes() -> None:
    img = canvas()
    paint(img, RED, 1, 1, "square")
    paint(img, RED, 12, 12, "circle")
    prompts = ["2 red circles"]
    assert CountingReward()(img[None], prompts).item() == -1.0
    assert CountingReward(match_shape=False)(img[None], prompts).item() == 0.0
    assert CountingReward(match_shape=False).accuracy(img[None], ["1 red circle"]).item() == 0.0
