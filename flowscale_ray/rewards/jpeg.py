"""JPEG (in)compressibility rewards (DDPO, Black et al. 2023).

Each image [3, H, W] in [0, 1] is quantised to 8 bits and written as a JPEG at quality 95 with PIL; its
size in kB (bytes / 1000) is the measure. `jpeg_compressibility` = -size (smaller files score higher),
`jpeg_incompressibility` = +size. Deterministic, CPU only, no weights.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward


def to_uint8_hwc(images: Tensor) -> Tensor:
    """[B, 3, H, W] floats in [0, 1] -> [B, H, W, 3] uint8 on the CPU (NaN counts as 0)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    x = torch.nan_to_num(images.detach().to("cpu", torch.float32), nan=0.0)
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def jpeg_size_kb(images: Tensor, quality: int = 95) -> Tensor:
    """JPEG file size in kB of each image, [B] float64."""
    from PIL import Image

    sizes = []
    for arr in to_uint8_hwc(images).numpy():
        buffer = io.BytesIO()
        Image.fromarray(arr).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return torch.tensor(sizes, dtype=torch.float64)


class _JpegReward(Reward):
    sign = 1.0

    def __init__(self, quality: int = 95) -> None:
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"reward.quality: expected an integer in 1..100, got {quality!r}")
        self.quality = quality

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        return self.sign * jpeg_size_kb(samples, self.quality)


class JpegCompressibility(_JpegReward):
    """-(JPEG size in kB): rewards images that compress well."""

    name = "jpeg_compressibility"
    sign = -1.0


class JpegIncompressibility(_JpegReward):
    """+(JPEG size in kB): rewards detailed images."""

    name = "jpeg_incompressibility"
    sign = 1.0
