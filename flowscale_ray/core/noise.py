"""Explicit randomness: every draw comes from a generator seeded by a stable hash of its identity.

A draw is identified by (run seed, prompt id, chain, step, candidate, stream). Because each particle's
noise has its own generator, results do not depend on how particles are batched or sharded.
"""

from __future__ import annotations

import hashlib
import struct

import torch
from torch import Tensor

_MASK = (1 << 63) - 1
_INT_TAG = b"i" + struct.pack("<I", 8)


def _encode(part: int | str) -> bytes:
    if isinstance(part, bool) or not isinstance(part, int | str):
        raise TypeError(f"seed parts must be int or str, got {type(part).__name__}")
    if isinstance(part, str):
        data = part.encode()
        return b"s" + struct.pack("<I", len(data)) + data
    return _INT_TAG + struct.pack("<q", part)


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a stable hash of the parts (independent of PYTHONHASHSEED and platform)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(_encode(part))
    return int.from_bytes(h.digest(), "little") & _MASK


class SeedDeriver:
    """derive_seed(*prefix, *ints) with the prefix hashed once: the hot path for per-particle noise."""

    def __init__(self, *prefix: int | str) -> None:
        self._h = hashlib.blake2b(digest_size=8)
        for part in prefix:
            self._h.update(_encode(part))

    def __call__(self, *ints: int) -> int:
        h = self._h.copy()
        for v in ints:
            h.update(_INT_TAG)
            h.update(struct.pack("<q", v))
        return int.from_bytes(h.digest(), "little") & _MASK


def standard_normal(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Tensor:
    """N(0, I) of the given shape from a CPU generator seeded with `seed`, moved to `device`.

    Drawing on the CPU keeps the values identical across devices and batch sizes.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(shape, generator=gen, dtype=torch.float32)
    return z if dtype == torch.float32 and str(device) == "cpu" else z.to(device=device, dtype=dtype)
