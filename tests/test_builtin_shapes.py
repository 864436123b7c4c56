"""Procedural shapes dataset and prompt language."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from flowscale_ray.builtin import shapes
from flowscale_ray.builtin.shapes import Group


def test_parse_prompt_forms() -> None:
    assert shapes.parse_prompt("3 red circles") == [Group(3, "red", "circle")]
    assert shapes.parse_prompt("2 blue squares and 4 yellow circles") == [
        Group(2, "blue", "square"),
        Group(4, "yellow", "circle"),
    ]
    assert shapes.parse_prompt("An image of one Green square, two red circles.") == [
        Group(1, "green", "square"),
        Group(2, "red", "circle"),
    ]
    assert shapes.parse_prompt("a cat") == []
    # the same class twice adds up
    assert shapes.parse_prompt("1 red circle and 2 red circles") == [Group(3, "red", "circle")]


def test_prompt_text_round_trip() -> None:
    for groups in shapes.all_prompts():
        assert shapes.parse_prompt(shapes.prompt_text(groups)) == list(groups)
    assert shapes.prompt_text([Group(1, "red", "circle")]) == "1 red circle"


def test_groups_from_counts_and_errors() -> None:
    groups = shapes.groups_from_counts({"blue square": 2, "Yellow circles": 4})
    assert groups == [Group(2, "blue", "square"), Group(4, "yellow", "circle")]
    with pytest.raises(ValueError, match="unknown object class"):
        shapes.groups_from_counts({"purple star": 1})


def test_prompt_space_and_eval_set() -> None:
    prompts = shapes.all_prompts()
    assert len(prompts) == len({shapes.prompt_key(p) for p in prompts})
    for p in prompts:
        assert 1 <= len(p) <= 2
        assert sum(g.count for g in p) <= shapes.MAX_TOTAL
        assert len({g.colour for g in p}) == len(p)
    evals = shapes.evaluation_prompts()
    assert len(evals) >= 50
    assert len(set(evals)) == len(evals)
    assert evals == shapes.evaluation_prompts()  # fixed
    keys = shapes.evaluation_prompt_keys()
    assert len(keys) == len(evals)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        assert shapes.prompt_key(shapes.sample_groups(rng, keys)) not in keys


def test_render_counts_colours_and_no_overlap() -> None:
    rng = np.random.default_rng(1)
    palette = {tuple(np.float32(v) for v in shapes.PALETTE[c]) for c in shapes.COLOURS}
    palette.add(tuple(np.float32(v) for v in shapes.BACKGROUND))
    for groups in [*shapes.all_prompts()[::37], (Group(4, "red", "circle"), Group(4, "blue", "square"))]:
        img, placed = shapes.render(groups, rng)
        assert img.shape == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)
        assert {tuple(px) for px in img.reshape(-1, 3)} <= palette
        # one placed object per requested object, of the requested classes
        found = np.bincount([c for c, _, _ in placed], minlength=shapes.NUM_CLASSES)
        assert found.tolist() == shapes.counts_vector(groups).tolist()
        # bounding boxes are inside the image and at least GAP pixels apart
        for (_, r1, c1), (_, r2, c2) in itertools.combinations(placed, 2):
            assert max(abs(r1 - r2), abs(c1 - c2)) >= shapes.OBJECT_BOX + shapes.GAP
        for _, r, c in placed:
            assert 0 <= r <= shapes.IMAGE_SIZE - shapes.OBJECT_BOX
            assert 0 <= c <= shapes.IMAGE_SIZE - shapes.OBJECT_BOX
        # the pixels of each colour add up to the sprites' areas
        for colour in shapes.COLOURS:
            n_pix = int(np.all(img == np.float32(shapes.PALETTE[colour]), axis=-1).sum())
            expected = sum(g.count * int(shapes.sprite(g.shape).sum()) for g in groups if g.colour == colour)
            assert n_pix == expected


def test_sample_batch_deterministic() -> None:
    a = shapes.sample_batch(8, np.random.default_rng(5))
    b = shapes.sample_batch(8, np.random.default_rng(5))
    assert a.images.shape == (8, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE)
    assert a.images.dtype == torch.float32
    assert float(a.images.min()) >= 0.0 and float(a.images.max()) <= 1.0
    assert torch.equal(a.images, b.images) and a.texts == b.texts
    for text, counts in zip(a.texts, a.counts, strict=True):
        assert torch.equal(shapes.counts_vector(shapes.parse_prompt(text)), counts)
