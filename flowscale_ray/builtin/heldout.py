"""Held-out evaluator of the quantity-aware task: a small CNN that predicts how many objects of each class an
image holds. The search never optimises it (it optimises the pixel-counting reward `counting`), so it is an
independent check of whether a higher counting reward means better images.

Network: images [B, 3, 32, 32] in [0, 1] -> convolutions down to an 8x8 grid -> a density per class,
summed over the image (counting is additive) -> expected count c per class -> logits [B, 8, 9]: for each
class (`shapes.CLASSES` order) a discretised Gaussian over counts 0..8 around c. Trained by
`python -m flowscale_ray.builtin.train_heldout --seed 0` on procedural images (prompt layouts and random
class mixes, blurred, noised and colour-jittered so that it copes with imperfect samples); the weights ship
as `assets/shapes_counter.safetensors`.

Reward "counting_heldout" (same contract as every reward: samples [B, 3, H, W], prompts -> [B]) scores the
classes named by each prompt (targets as in `counting.prompt_targets`, so `prompt.metadata["counts"]`
overrides the text). Modes:
  "prob"      (default) the CNN's probability that every named class has exactly its count, in [0, 1];
  "log_prob"  the log of that probability (sum over classes);
  "sq_error"  -sum_i (E[count_i] - C_i)^2 with E the CNN's expected count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from flowscale_ray.builtin import shapes
from flowscale_ray.builtin.counting import prompt_targets
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_COUNTER_WEIGHTS = ASSETS / "shapes_counter.safetensors"
MAX_PREDICTED = shapes.MAX_TOTAL  # counts 0..8 per class


@dataclass
class CounterConfig:
    width: int = 24
    classes: int = shapes.NUM_CLASSES
    max_count: int = MAX_PREDICTED


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # No normalisation layer: per-image normalisation (GroupNorm) would rescale the features by how much of
    # the image is covered, which breaks the additive sum-pooling used for counting.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.SiLU())


class CountNet(nn.Module):
    """logits [B, classes, max_count + 1] = net(images [B, 3, 32, 32] in [0, 1]).

    A density-map counter: convolutions give a density per class on an 8x8 grid, the
    expected count c of a class is the density's sum over the image, and the count distribution is a
    discretised Gaussian around it, logit_k = -(k - c)^2 / (2 s^2), with a learned width s per class.
    """

    def __init__(self, cfg: CounterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.features = nn.Sequential(
            _conv(3, w),
            _conv(w, 2 * w, stride=2),
            _conv(2 * w, 2 * w),
            _conv(2 * w, 4 * w, stride=2),
            _conv(4 * w, 4 * w),
        )
        self.density = nn.Conv2d(4 * w, cfg.classes, 1)
        nn.init.zeros_(self.density.weight)
        nn.init.zeros_(self.density.bias)
        self.log_width = nn.Parameter(torch.full((cfg.classes,), math.log(0.5)))

    def density_map(self, images: Tensor) -> Tensor:
        """Density [B, classes, 8, 8]: about 1 in the cell holding an object's centre."""
        return self.density(self.features(images * 2.0 - 1.0))

    def expected_counts(self, images: Tensor) -> Tensor:
        """c [B, classes]: the summed density."""
        return self.density_map(images).sum(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.count_logits(self.expected_counts(images))

    def count_logits(self, c: Tensor) -> Tensor:
        """Logits [B, classes, max_count + 1] of the discretised Gaussian around counts c [B, classes]."""
        k = torch.arange(self.cfg.max_count + 1, dtype=c.dtype, device=c.device)
        width = self.log_width.exp()[None, :, None]
        return -((k - c[..., None]) ** 2) / (2.0 * width**2)


def save_counter(net: CountNet, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write the counter as float16 safetensors with its config in the header metadata."""
    from safetensors.torch import save_file

    meta = {"config": json.dumps(asdict(net.cfg))}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata=meta)


def load_counter(path: str | Path | None = None) -> CountNet:
    """The shipped counter (default) or one written by `save_counter`; safetensors only."""
    from safetensors import safe_open

    path = Path(path) if path else DEFAULT_COUNTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"held-out counter weights not found: {str(path)!r}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    net = CountNet(CounterConfig(**json.loads(meta["config"])))
    net.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(path)).items()})
    return net.eval().requires_grad_(False)


_MODES = ("prob", "log_prob", "sq_error")


class HeldoutCountingReward(Reward):
    """CNN-based counting score (see the module docstring); options: mode, weights, batch_size."""

    name = "counting_heldout"

    def __init__(self, mode: str = "prob", weights: str | None = None, batch_size: int = 256) -> None:
        if mode not in _MODES:
            raise ValueError(f"counting_heldout: mode must be one of {', '.join(_MODES)}, got {mode!r}")
        self.mode = mode
        self.batch_size = int(batch_size)
        self.net = load_counter(weights)

    def log_probs(self, samples: Tensor) -> Tensor:
        """Log-probabilities [B, 8, 9] of each count of each class; differentiable in `samples` (the weights
        are frozen, so nothing is recorded unless the samples require grad, as under gradient guidance)."""
        if samples.ndim != 4 or samples.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(samples.shape)}")
        x = torch.nan_to_num(samples.to("cpu", torch.float32), nan=0.0).clamp(0.0, 1.0)
        if x.shape[-2:] != (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE):
            x = F.interpolate(x, size=(shapes.IMAGE_SIZE, shapes.IMAGE_SIZE), mode="area")
        out = [self.net(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        logits = torch.cat(out) if out else torch.zeros(0, shapes.NUM_CLASSES, MAX_PREDICTED + 1)
        return logits.log_softmax(dim=-1)

    def predict_counts(self, samples: Tensor) -> Tensor:
        """Most likely count of each class, [B, 8] int64."""
        return self.log_probs(samples).argmax(dim=-1)

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt | str]) -> Tensor:
        if samples.shape[0] != len(prompts):
            raise ValueError(f"{samples.shape[0]} samples but {len(prompts)} prompts")
        logp = self.log_probs(samples)
        targets, scored = prompt_targets(prompts)
        if self.mode == "sq_error":
            expected = (logp.exp() * torch.arange(MAX_PREDICTED + 1, dtype=torch.float32)).sum(-1)
            return 0.0 - ((expected - targets) ** 2 * scored).sum(dim=1)
        picked = logp.gather(2, targets.clamp(0, MAX_PREDICTED)[..., None])[..., 0]
        picked = torch.where(targets > MAX_PREDICTED, torch.full_like(picked, -30.0), picked)
        total = (picked * scored).sum(dim=1)
        return total.exp() if self.mode == "prob" else total
