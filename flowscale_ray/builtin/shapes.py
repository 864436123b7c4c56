"""Procedural "coloured shapes" dataset and the prompt language of the built-in quantity-aware task.

Images are 32x32 RGB on a black background holding a given number of objects of each class. A class is
(colour, shape): 4 colours (red, green, blue, yellow) x 2 shapes (circle, square) = 8 classes, indexed
`colour_index * 2 + shape_index` (see `CLASSES`). Objects have a fixed size (a circle of diameter 7 or a
6x6 square, both about 36 pixels) and are placed at random with at least `GAP` background pixels between
their bounding boxes, so they never touch and each object is one connected blob.

Prompts name one or two groups of distinct colours, e.g. "3 red circles" or
"2 blue squares and 4 yellow circles". Counts are 1..6 per group and at most `MAX_TOTAL` objects in all.
`parse_prompt` turns such text (digits or number words, singular or plural, groups joined by "and" or
commas) back into class counts; `counts_vector` gives the [8] count vector used by the model's text
encoder, the rewards and the held-out evaluator.

`evaluation_prompts()` is the fixed evaluation set (64 prompts, seeded); `sample_batch(..., exclude=...)`
draws training data and never draws an evaluation prompt when given `exclude=evaluation_prompt_keys()`.

Shapes: images are float tensors [B, 3, 32, 32] in [0, 1]; count vectors are int64 [B, 8].
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import torch
from torch import Tensor

from flowscale_ray.number_words import NUMBER_WORDS

IMAGE_SIZE = 32
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square")
# RGB of each colour in [0, 1]; the background is black.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.15, 0.25, 1.0),
    "yellow": (0.95, 0.9, 0.1),
}
BACKGROUND: tuple[float, float, float] = (0.0, 0.0, 0.0)
CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
NUM_CLASSES = len(CLASSES)
MAX_COUNT = 6  # per group
MAX_TOTAL = 8  # objects per image
OBJECT_BOX = 7  # bounding box side of a sprite (the square is 6x6 inside it)
GAP = 2  # minimum number of background pixels between two objects' bounding boxes

# NUMBER_WORDS (imported above) is shared with rewards.detection, so it lives in a neutral module.


@dataclass(frozen=True)
class Group:
    """`count` objects of one class, e.g. Group(3, "red", "circle")."""

    count: int
    colour: str
    shape: str

    @property
    def class_name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def class_index(self) -> int:
        return class_index(self.colour, self.shape)


def class_index(colour: str, shape: str) -> int:
    """Index of the class (colour, shape) in `CLASSES`."""
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


def class_name(index: int) -> str:
    """'red circle' for index 0, and so on."""
    colour, shape = CLASSES[index]
    return f"{colour} {shape}"


# ----------------------------------------------------------------------------------------------- text


def prompt_text(groups: Sequence[Group]) -> str:
    """'3 red circles', '1 blue square and 4 yellow circles'."""
    parts = [f"{g.count} {g.colour} {g.shape}{'' if g.count == 1 else 's'}" for g in groups]
    return " and ".join(parts)


_SHAPE_FORMS = {"circle": "circle", "circles": "circle", "square": "square", "squares": "square"}
_GROUP_RE = re.compile(
    r"\b(\d+|" + "|".join(NUMBER_WORDS) + r")\s+(" + "|".join(COLOURS) + r")\s+(circles?|squares?)\b",
    re.IGNORECASE,
)


def parse_prompt(text: str) -> list[Group]:
    """Groups named in the text, in order; repeated classes are added up. Unknown words are ignored.

    >>> parse_prompt("2 blue squares and four yellow circles")
    [Group(count=2, colour='blue', shape='square'), Group(count=4, colour='yellow', shape='circle')]
    """
    found: dict[tuple[str, str], int] = {}
    for number, colour, shape in _GROUP_RE.findall(text):
        n = int(number) if number.isdigit() else NUMBER_WORDS[number.lower()]
        key = (colour.lower(), _SHAPE_FORMS[shape.lower()])
        found[key] = found.get(key, 0) + n
    return [Group(n, c, s) for (c, s), n in found.items()]


def parse_class_name(name: str) -> tuple[str, str]:
    """'blue square', 'blue squares', 'Blue_Square' -> ('blue', 'square')."""
    words = name.replace("_", " ").replace("-", " ").lower().split()
    if len(words) != 2 or words[0] not in COLOURS or words[1] not in _SHAPE_FORMS:
        allowed = ", ".join(class_name(i) for i in range(NUM_CLASSES))
        raise ValueError(f"unknown object class {name!r}; allowed: {allowed}")
    return words[0], _SHAPE_FORMS[words[1]]


def groups_from_counts(counts: Mapping[str, int]) -> list[Group]:
    """{'blue square': 2, 'yellow circle': 4} -> groups (the `prompt.metadata['counts']` format)."""
    groups = []
    for name, n in counts.items():
        colour, shape = parse_class_name(str(name))
        groups.append(Group(int(n), colour, shape))
    return groups


def counts_vector(groups: Iterable[Group]) -> Tensor:
    """Per-class target counts [NUM_CLASSES] int64 (classes not named are 0)."""
    v = torch.zeros(NUM_CLASSES, dtype=torch.int64)
    for g in groups:
        v[g.class_index] += int(g.count)
    return v


def prompt_key(groups: Iterable[Group]) -> tuple[tuple[int, int], ...]:
    """Order-free identity of a prompt: sorted (class index, count) pairs."""
    return tuple(sorted((g.class_index, int(g.count)) for g in groups))


# -------------------------------------------------------------------------------------- prompt space


@lru_cache(maxsize=1)
def all_prompts() -> tuple[tuple[Group, ...], ...]:
    """Every prompt of the task: one group (48) or two groups of distinct colours (672)."""
    out: list[tuple[Group, ...]] = []
    for c in COLOURS:
        for s in SHAPES:
            for n in range(1, MAX_COUNT + 1):
                out.append((Group(n, c, s),))
    for i, c1 in enumerate(COLOURS):
        for c2 in COLOURS[i + 1 :]:
            for s1 in SHAPES:
                for s2 in SHAPES:
                    for n1 in range(1, MAX_COUNT + 1):
                        for n2 in range(1, MAX_COUNT + 1):
                            if n1 + n2 <= MAX_TOTAL:
                                out.append((Group(n1, c1, s1), Group(n2, c2, s2)))
    return tuple(out)


EVAL_SEED = 20250101
EVAL_SINGLE = 12
EVAL_DOUBLE = 52


@lru_cache(maxsize=1)
def evaluation_prompts() -> tuple[str, ...]:
    """The fixed evaluation set: 12 one-group and 52 two-group prompts, never drawn for training.

    Chosen with a fixed seed; the group order inside a two-group prompt is shuffled too, so the text
    does not always list colours in the same order.
    """
    rng = np.random.default_rng(EVAL_SEED)
    prompts = all_prompts()
    singles = [p for p in prompts if len(p) == 1]
    doubles = [p for p in prompts if len(p) == 2]
    chosen_s = [singles[i] for i in sorted(rng.choice(len(singles), EVAL_SINGLE, replace=False))]
    chosen_d = [doubles[i] for i in sorted(rng.choice(len(doubles), EVAL_DOUBLE, replace=False))]
    texts = [prompt_text(p) for p in chosen_s]
    for p in chosen_d:
        texts.append(prompt_text(p if rng.random() < 0.5 else p[::-1]))
    return tuple(texts)


@lru_cache(maxsize=1)
def evaluation_prompt_keys() -> frozenset[tuple[tuple[int, int], ...]]:
    """`prompt_key` of every evaluation prompt (what training excludes)."""
    return frozenset(prompt_key(parse_prompt(t)) for t in evaluation_prompts())


def sample_groups(
    rng: np.random.Generator,
    exclude: frozenset[tuple[tuple[int, int], ...]] | None = None,
    p_single: float = 0.3,
) -> tuple[Group, ...]:
    """A random prompt (one group with probability p_single), never one whose key is in `exclude`."""
    prompts = all_prompts()
    n_single = len(prompts) - len([p for p in prompts if len(p) == 2])
    while True:
        if rng.random() < p_single:
            groups = prompts[int(rng.integers(n_single))]
        else:
            groups = prompts[n_single + int(rng.integers(len(prompts) - n_single))]
            if rng.random() < 0.5:
                groups = groups[::-1]
        if exclude is None or prompt_key(groups) not in exclude:
            return groups


# -------------------------------------------------------------------------------------------- render


@cache
def sprite(shape: str) -> np.ndarray:
    """Boolean mask [OBJECT_BOX, OBJECT_BOX] of a shape."""
    yy, xx = np.mgrid[0:OBJECT_BOX, 0:OBJECT_BOX]
    c = (OBJECT_BOX - 1) / 2.0
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= (OBJECT_BOX / 2.0) ** 2
    if shape == "square":
        return (yy < OBJECT_BOX - 1) & (xx < OBJECT_BOX - 1) if OBJECT_BOX % 2 else np.ones_like(yy, bool)
    raise ValueError(f"unknown shape {shape!r}")


def place_objects(n: int, rng: np.random.Generator, max_restarts: int = 100) -> np.ndarray:
    """Top-left corners [n, 2] (row, col) of n bounding boxes, pairwise at least GAP pixels apart.

    Each object is drawn uniformly among the positions still free; on a dead end the layout restarts.
    """
    span = IMAGE_SIZE - OBJECT_BOX + 1
    grid_r, grid_c = np.mgrid[0:span, 0:span]
    cand = np.stack([grid_r.ravel(), grid_c.ravel()], axis=1)
    reach = OBJECT_BOX + GAP
    for _ in range(max_restarts):
        free = np.ones(len(cand), dtype=bool)
        chosen: list[np.ndarray] = []
        for _ in range(n):
            idx = np.flatnonzero(free)
            if idx.size == 0:
                break
            pos = cand[idx[int(rng.integers(idx.size))]]
            chosen.append(pos)
            free &= np.abs(cand - pos).max(axis=1) >= reach
        if len(chosen) == n:
            return np.array(chosen, dtype=np.int64).reshape(n, 2)
    raise RuntimeError(f"could not place {n} objects in a {IMAGE_SIZE}x{IMAGE_SIZE} image")


def render(groups: Sequence[Group], rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """An image [H, W, 3] float32 in [0, 1] and the placed objects as (class index, row, col)."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    img[:] = BACKGROUND
    items = [g for g in groups for _ in range(g.count)]
    order = rng.permutation(len(items))
    corners = place_objects(len(items), rng)
    placed = []
    for k, (r, c) in zip(order, corners, strict=True):
        g = items[int(k)]
        mask = sprite(g.shape)
        region = img[r : r + OBJECT_BOX, c : c + OBJECT_BOX]
        region[mask] = PALETTE[g.colour]
        placed.append((g.class_index, int(r), int(c)))
    return img, placed


@dataclass
class Batch:
    images: Tensor  # [B, 3, H, W] float32 in [0, 1]
    texts: list[str]
    counts: Tensor  # [B, NUM_CLASSES] int64


def sample_batch(
    batch_size: int,
    rng: np.random.Generator,
    exclude: frozenset[tuple[tuple[int, int], ...]] | None = None,
    p_single: float = 0.3,
) -> Batch:
    """A random training batch of images, their prompt texts and their class counts."""
    images = np.empty((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    texts, counts = [], []
    for i in range(batch_size):
        groups = sample_groups(rng, exclude, p_single)
        images[i], _ = render(groups, rng)
        texts.append(prompt_text(groups))
        counts.append(counts_vector(groups))
    return Batch(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), texts, torch.stack(counts))


def render_prompt(text: str, seed: int = 0) -> Tensor:
    """One image [3, H, W] in [0, 1] showing exactly what the prompt asks (for tests and examples)."""
    groups = parse_prompt(text)
    img, _ = render(groups, np.random.default_rng(seed))
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()
