"""PNG output: single images and contact sheets (images are [C, H, W] tensors in [0, 1])."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor


def to_pil(image: Tensor) -> Image.Image:
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if arr.shape[0] == 1:
        return Image.fromarray(arr[0].numpy(), mode="L")
    return Image.fromarray(arr.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def png_bytes(image: Tensor) -> bytes:
    buf = io.BytesIO()
    to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: Tensor, path: Path, scale: int = 1) -> None:
    img = to_pil(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    img.save(path, format="PNG")


def contact_sheet(images: Sequence[Tensor], columns: int | None = None, pad: int = 2) -> Tensor:
    """Tile images [C, H, W] into one image, row-major, with a white border."""
    if not images:
        raise ValueError("contact sheet needs at least one image")
    c, h, w = images[0].shape
    cols = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    sheet = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        sheet[:, y : y + h, x : x + w] = img.clamp(0, 1)
    return sheet
