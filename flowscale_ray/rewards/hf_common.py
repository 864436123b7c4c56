"""Loading transformers reward models (CLIP, GroundingDINO) from a local folder or hub id, safely.

Weights load only through `from_pretrained(..., use_safetensors=True)`; a local folder is checked first so
that a missing or unreadable one fails at start with one line naming the path and what belongs there.
Rewards default to float32 (scores are compared across particles; bfloat16 is allowed on request).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowscale_ray.errors import first_line
from flowscale_ray.models.diffusers_common import DTYPES, is_local_path, quiet_libraries, resolve_device


def device_and_dtype(device: str, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    dev = resolve_device(device, field="reward.device")
    if dtype is None:
        return dev, torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"reward.dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    return dev, DTYPES[dtype]


def check_folder(path: Any, what: str, extra_files: Sequence[str] = ()) -> str:
    """A local folder holding a transformers model (config.json + .safetensors weights) and `extra_files`
    (an entry 'a | b' accepts either file); hub ids pass through to from_pretrained."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"reward.path: expected a local folder or hub id holding {what}, got {path!r}")
    if not is_local_path(path):
        return path
    expected = f"{what}: config.json, model.safetensors (transformers save_pretrained layout)"
    if extra_files:
        expected += ", " + ", ".join(extra_files)
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"reward.path: no such folder {str(folder)!r}; expected {expected}")
    if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
        raise ValueError(f"reward.path: {str(folder)!r} is not a readable folder; expected {expected}")
    # An entry "a | b" is satisfied by either file.
    missing = [f for f in ("config.json", *extra_files) if not any((folder / a).is_file() for a in f.split(" | "))]
    if not any(folder.glob("*.safetensors")):
        missing.append("*.safetensors weights")
    if missing:
        raise ValueError(f"reward.path: {str(folder)!r} lacks {', '.join(missing)}; expected {expected}")
    return str(folder)


def load(loader: Any, source: str, what: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source, ...)` with errors as one line naming the source."""
    try:
        with quiet_libraries(capture_stderr=True):  # no library warnings or load reports before our line
            return loader.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise ValueError(f"reward.path: cannot load {what} from {source!r}: {first_line(exc, typed=False)}") from None


def pil_images(samples: Tensor) -> list[Any]:
    """[B, 3, H, W] in [0, 1] -> PIL RGB images (what the processors expect from real photos)."""
    from PIL import Image

    from flowscale_ray.rewards.jpeg import to_uint8_hwc

    return [Image.fromarray(a) for a in to_uint8_hwc(samples).numpy()]


def texts_of(prompts: Sequence[Any]) -> list[str]:
    return [p if isinstance(p, str) else p.text for p in prompts]
