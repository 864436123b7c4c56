"""The counting reward of the quantity-aware task (RBF paper): reward = -sum_i (C_i - C_hat_i)^2.

For each object class i named by the prompt, C_i is the requested count and C_hat_i the number of objects
of that class found in the image. Objects are found without any learned part:

1. every pixel is given the nearest of the prototype colours (black background, the four object colours,
   white, grey); pixels whose nearest prototype is an object colour within `max_distance` (RGB euclidean)
   belong to that colour's mask, anything else is ignored (so noise and saturated regions do not count);
2. connected components (4-connectivity) of each colour mask, by min-label propagation with pointer
   jumping, batched over images and colours in torch;
3. components smaller than `min_area` pixels (specks, noise) are dropped; the rest are classified as a
   square when they fill at least `square_fill` of their bounding box, else as a circle.

Targets come from `prompt.metadata["counts"]` when present, a mapping from class name to count such as
{"blue square": 2, "yellow circle": 4} (singular or plural, any case; a class given with count 0 is
scored too, so metadata can ask for "no red circles"); otherwise from parsing `prompt.text` (see
`shapes.parse_prompt`). Classes the prompt does not mention are not scored (as in the paper) unless
`penalize_others=True`, which scores every class, unnamed ones with target 0. `match_shape=False` makes
the classes colours: circles and squares of a colour are pooled, for the requested and the found counts
(every prompt of the task names distinct colours, so this is well defined for them).

Shapes: samples [B, 3, H, W] in [0, 1] (any float dtype, values are clamped; NaN counts as black);
counts [B, 8] int64 in `shapes.CLASSES` order; reward and accuracy [B] float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from flowscale_ray.builtin import shapes
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward

# Prototypes: index 0 background, 1..4 the object colours (shapes.COLOURS order), then distractors.
_PROTOTYPES = torch.tensor(
    [shapes.BACKGROUND, *(shapes.PALETTE[c] for c in shapes.COLOURS), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5)],
    dtype=torch.float32,
)
_NUM_COLOURS = len(shapes.COLOURS)


def colour_masks(samples: Tensor, max_distance: float = 0.45) -> Tensor:
    """Boolean masks [B, n_colours, H, W]: pixels whose nearest prototype is that object colour."""
    x = torch.nan_to_num(samples.detach().to("cpu", torch.float32), nan=0.0).clamp(0.0, 1.0)
    protos = _PROTOTYPES.view(1, -1, 3, 1, 1)
    dist = (x.unsqueeze(1) - protos).square().sum(dim=2)  # [B, P, H, W]
    best, nearest = dist.min(dim=1)
    near_enough = best <= max_distance**2
    colour_ids = torch.arange(1, _NUM_COLOURS + 1).view(1, -1, 1, 1)
    return (nearest.unsqueeze(1) == colour_ids) & near_enough.unsqueeze(1)


def connected_components(mask: Tensor) -> Tensor:
    """Labels [N, H, W] int64 of the 4-connected components of mask [N, H, W] (0 = not in the mask).

    A component's label is 1 + the flat index of its first pixel, so labels are unique per image.
    """
    n, h, w = mask.shape
    big = h * w + 1
    idx = torch.arange(1, h * w + 1, dtype=torch.int64).view(1, h, w).expand(n, h, w)
    lab = torch.where(mask, idx, torch.full_like(idx, big))
    for _ in range(h * w):
        p = F.pad(lab, (1, 1, 1, 1), value=big)
        nb = torch.minimum(
            torch.minimum(p[:, :-2, 1:-1], p[:, 2:, 1:-1]), torch.minimum(p[:, 1:-1, :-2], p[:, 1:-1, 2:])
        )
        new = torch.where(mask, torch.minimum(lab, nb), lab)
        # Pointer jumping: a label points at a pixel of the same component; take that pixel's label.
        flat = torch.cat([new.reshape(n, h * w), torch.full((n, 1), big, dtype=torch.int64)], dim=1)
        jumped = flat.gather(1, (new.reshape(n, h * w) - 1).clamp(max=h * w)).view(n, h, w)
        new = torch.where(mask, torch.minimum(new, jumped), new)
        if torch.equal(new, lab):
            break
        lab = new
    return torch.where(mask, lab, torch.zeros_like(lab))


def component_stats(labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-component (image index, area, bounding-box height, bounding-box width), one entry each."""
    n, h, w = labels.shape
    size = h * w + 1
    key = (torch.arange(n).view(n, 1, 1) * size + labels).reshape(-1)
    fg = labels.reshape(-1) > 0
    key = key[fg]
    if key.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty, empty
    rows = torch.arange(h).view(1, h, 1).expand(n, h, w).reshape(-1)[fg]
    cols = torch.arange(w).view(1, 1, w).expand(n, h, w).reshape(-1)[fg]
    uniq, inv = torch.unique(key, return_inverse=True)
    m = uniq.numel()
    area = torch.bincount(inv, minlength=m)
    big = torch.full((m,), h + w, dtype=torch.int64)
    zero = torch.full((m,), -1, dtype=torch.int64)
    r0 = big.scatter_reduce(0, inv, rows, reduce="amin")
    r1 = zero.scatter_reduce(0, inv, rows, reduce="amax")
    c0 = big.scatter_reduce(0, inv, cols, reduce="amin")
    c1 = zero.scatter_reduce(0, inv, cols, reduce="amax")
    return uniq // size, area, r1 - r0 + 1, c1 - c0 + 1


def count_objects(samples: Tensor, max_distance: float = 0.45, min_area: int = 10, square_fill: float = 0.88) -> Tensor:
    """Objects found per class: [B, 8] int64 in `shapes.CLASSES` order (see the module docstring)."""
    if samples.ndim != 4 or samples.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(samples.shape)}")
    b = samples.shape[0]
    masks = colour_masks(samples, max_distance)  # [B, C, H, W]
    labels = connected_components(masks.reshape(b * _NUM_COLOURS, *masks.shape[2:]))
    image_colour, area, bh, bw = component_stats(labels)
    keep = area >= min_area
    fill = area.to(torch.float32) / (bh * bw).to(torch.float32)
    is_square = fill >= square_fill
    colour = image_colour % _NUM_COLOURS
    image = image_colour // _NUM_COLOURS
    shape = torch.where(is_square, shapes.SHAPES.index("square"), shapes.SHAPES.index("circle"))
    cls = colour * len(shapes.SHAPES) + shape
    counts = torch.zeros(b * shapes.NUM_CLASSES, dtype=torch.int64)
    counts.index_add_(0, (image * shapes.NUM_CLASSES + cls)[keep], torch.ones_like(area)[keep])
    return counts.view(b, shapes.NUM_CLASSES)


def prompt_targets(prompts: Sequence[Prompt | str]) -> tuple[Tensor, Tensor]:
    """Target counts [B, 8] int64 and which classes are scored [B, 8] bool, per prompt.

    `prompt.metadata["counts"]` (class name -> count) overrides the text when present.
    """
    targets = torch.zeros(len(prompts), shapes.NUM_CLASSES, dtype=torch.int64)
    scored = torch.zeros(len(prompts), shapes.NUM_CLASSES, dtype=torch.bool)
    for i, p in enumerate(prompts):
        meta: dict[str, Any] = {} if isinstance(p, str) else p.metadata
        text = p if isinstance(p, str) else p.text
        if meta.get("counts") is not None:
            groups = shapes.groups_from_counts(meta["counts"])
        else:
            groups = shapes.parse_prompt(text)
        for g in groups:
            targets[i, g.class_index] += g.count
            scored[i, g.class_index] = True
    return targets, scored


def counting_scores(
    counts: Tensor,
    targets: Tensor,
    scored: Tensor,
    penalize_others: bool = False,
    match_shape: bool = True,
) -> tuple[Tensor, Tensor]:
    """(reward = -sum of squared count errors, exact-count accuracy in {0, 1}), both [B] float32.

    match_shape=False pools the two shapes of each colour first (classes are then colours).
    """
    if not match_shape:
        n_shapes = len(shapes.SHAPES)
        counts = counts.view(-1, _NUM_COLOURS, n_shapes).sum(-1)
        targets = targets.view(-1, _NUM_COLOURS, n_shapes).sum(-1)
        scored = scored.view(-1, _NUM_COLOURS, n_shapes).any(-1)
    if penalize_others:
        scored = torch.ones_like(scored)
    err = (counts - targets).to(torch.float32).square() * scored
    reward = 0.0 - err.sum(dim=1)
    exact = ((counts == targets) | ~scored).all(dim=1).to(torch.float32)
    return reward, exact


class CountingReward(Reward):
    """Counting reward; options are those of `count_objects` plus `penalize_others` and `match_shape`."""

    name = "counting"

    def __init__(
        self,
        max_distance: float = 0.45,
        min_area: int = 10,
        square_fill: float = 0.88,
        penalize_others: bool = False,
        match_shape: bool = True,
    ) -> None:
        self.max_distance = float(max_distance)
        self.min_area = int(min_area)
        self.square_fill = float(square_fill)
        self.penalize_others = bool(penalize_others)
        self.match_shape = bool(match_shape)

    def counts(self, samples: Tensor) -> Tensor:
        """Objects found per class, [B, 8] int64."""
        return count_objects(samples, self.max_distance, self.min_area, self.square_fill)

    def scores(self, samples: Tensor, prompts: Sequence[Prompt | str]) -> tuple[Tensor, Tensor, Tensor]:
        """(reward [B], accuracy [B], counts found [B, 8])."""
        if samples.shape[0] != len(prompts):
            raise ValueError(f"{samples.shape[0]} samples but {len(prompts)} prompts")
        counts = self.counts(samples)
        targets, scored = prompt_targets(prompts)
        reward, exact = counting_scores(counts, targets, scored, self.penalize_others, self.match_shape)
        return reward, exact, counts

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt | str]) -> Tensor:
        return self.scores(samples, prompts)[0]

    def describe(self, samples: Tensor, prompts: Sequence[Prompt | str]) -> list[str]:
        """What was counted in each sample, in words ("2 blue square, 4 yellow circle"), for tables."""
        _, _, counts = self.scores(samples, prompts)
        return [
            ", ".join(f"{int(c)} {shapes.class_name(j)}" for j, c in enumerate(row.tolist()) if c > 0) or "nothing"
            for row in counts
        ]

    def accuracy(self, samples: Tensor, prompts: Sequence[Prompt | str]) -> Tensor:
        """1.0 where every scored class has exactly the requested count, else 0.0; [B]."""
        return self.scores(samples, prompts)[1]


def accuracy(samples: Tensor, prompts: Sequence[Prompt | str]) -> Tensor:
    """Exact-count accuracy [B] of the default counting reward."""
    return CountingReward().accuracy(samples, prompts)


def count_table(samples: Tensor, prompts: Sequence[Prompt | str]) -> str:
    """A text table: prompt, requested counts, counts found, reward, exact (one row per sample)."""
    reward_fn = CountingReward()
    reward, exact, counts = reward_fn.scores(samples, prompts)
    targets, scored = prompt_targets(prompts)
    rows = [("prompt", "requested", "found", "reward", "exact")]
    for i, p in enumerate(prompts):
        text = p if isinstance(p, str) else p.text
        names = [j for j in range(shapes.NUM_CLASSES) if scored[i, j] or counts[i, j] > 0]
        req = ", ".join(f"{int(targets[i, j])} {shapes.class_name(j)}" for j in names if scored[i, j])
        found = ", ".join(f"{int(counts[i, j])} {shapes.class_name(j)}" for j in names)
        rows.append((text, req or "-", found or "-", f"{float(reward[i]):g}", "yes" if exact[i] else "no"))
    widths = [max(len(r[k]) for r in rows) for k in range(5)]
    return "\n".join("  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)) for r in rows)
