"""What replicas send back and how components are named (torch-free, so light workers can use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ComponentSpec:
    """A model or reward to build inside a replica: a registry name (or 'module:attr') and its options."""

    name: str
    options: dict[str, Any]


@dataclass
class ParticleResult:
    pid: int
    nfe: int
    s: float
    reward: float  # NaN when not scored
    preview: Any = None  # decoded x0 estimate, only when the reward does not run in the replica
