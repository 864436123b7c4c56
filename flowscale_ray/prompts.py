"""A prompt as the framework sees it: a stable id, the text, an optional seed and free-form metadata
(reward targets such as object counts, per-prompt overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    seed: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
