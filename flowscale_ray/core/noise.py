"""Explicit randomness: every draw comes from a generator seeded by a stable hash of its identity.

A draw is identified by (run seed, prompt id, chain, step, candidate, stream). Because each particle's
noise has its own generator, results do not depend on how particles are batched or sharded.
"""

from __future__ import annotations

import hashlib
import struct

import torch
from torch import Tensor


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a stable hash of the parts (independent of PYTHONHASHSEED and platform)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int | str):
            raise TypeError(f"seed parts must be int or str, got {type(part).__name__}")
        data = part.encode() if isinstance(part, str) else struct.pack("<q", part)
        h.update(b"s" if isinstance(part, str) else b"i")
        h.update(struct.pack("<I", len(data)))
        h.update(data)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def standard_normal(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Tensor:
    """N(0, I) of the given shape from a CPU generator seeded with `seed`, moved to `device`.

    Drawing on the CPU keeps the values identical across devices and batch sizes.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
