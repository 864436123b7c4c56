"""Object counting with a zero-shot detector (GroundingDINO) for the quantity-aware task.

The prompt names groups with counts ("3 red circles and 2 blue squares"; `prompt.metadata["counts"]`,
{"red circle": 3, ...}, overrides the text as in the built-in counting reward). The detector is queried
with the phrases joined as "red circle. blue square." Each predicted box is given to the phrase whose
tokens score it highest (max token probability over the phrase); it counts when its best token
probability is >= box_threshold and its phrase's probability is >= text_threshold (GroundingDINO's two
thresholds). Reward = -sum over the named groups of (requested - found)^2, as in counting.py.

options: path (transformers GroundingDINO folder or hub id, e.g. IDEA-Research/grounding-dino-base),
device, dtype (default float32), box_threshold (0.35), text_threshold (0.25), batch_size (8).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowscale_ray.number_words import NUMBER_WORDS
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import hf_common as hf
from flowscale_ray.rewards.base import Reward
from flowscale_ray.rewards.clip import check_batch_size

_GROUP = re.compile(r"^\s*(\d+|" + "|".join(NUMBER_WORDS) + r")\s+(.+?)\s*$", re.IGNORECASE)


def singular(phrase: str) -> str:
    """'red circles' -> 'red circle', 'boxes' -> 'box' (last word only, simple English rules)."""
    words = phrase.split()
    w = words[-1]
    if re.search(r"(ss|x|ch|sh)es$", w):
        w = w[:-2]
    elif w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return " ".join([*words[:-1], w])


def parse_groups(text: str) -> list[tuple[str, int]]:
    """'3 red circles and 2 blue squares' -> [('red circle', 3), ('blue square', 2)]; repeats add up.

    Same number words as the built-in parser (flowscale_ray.number_words); parts without a count are ignored.
    """
    found: dict[str, int] = {}
    for part in re.split(r",|;|\band\b|\bwith\b", text.lower().rstrip(". ")):
        m = _GROUP.match(part)
        if not m:
            continue
        number, phrase = m.groups()
        n = int(number) if number.isdigit() else NUMBER_WORDS[number]
        key = singular(re.sub(r"[^a-z0-9 ]", " ", phrase).strip())
        if key:
            found[key] = found.get(key, 0) + n
    return list(found.items())


def prompt_groups(prompt: Prompt | str) -> list[tuple[str, int]]:
    meta: dict[str, Any] = {} if isinstance(prompt, str) else prompt.metadata
    if meta.get("counts") is not None:
        return [(singular(str(k).lower()), int(v)) for k, v in meta["counts"].items()]
    return parse_groups(prompt if isinstance(prompt, str) else prompt.text)


def _check_threshold(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"reward.{field}: expected a number in [0, 1], got {value!r}")
    return float(value)


class ObjectCountReward(Reward):
    name = "object_count"

    def __init__(
        self,
        path: str,
        device: str = "auto",
        dtype: str | None = None,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        batch_size: int = 8,
    ) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.box_threshold = _check_threshold("box_threshold", box_threshold)
        self.text_threshold = _check_threshold("text_threshold", text_threshold)
        self.batch_size = check_batch_size(batch_size)
        self.device, self.dtype = hf.device_and_dtype(device, dtype)
        what = "a GroundingDINO detector"
        source = hf.check_folder(path, what, ("processor_config.json | preprocessor_config.json",))
        model = hf.load(AutoModelForZeroShotObjectDetection, source, what, dtype=self.dtype, use_safetensors=True)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.processor = hf.load(AutoProcessor, source, what)

    def _query(self, phrases: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of 'p1. p2.' and each phrase's token span [start, end)."""
        tok = self.processor.tokenizer
        ids = tok(". ".join(phrases) + ".")["input_ids"]
        spans, pos = [], 1  # after [CLS]
        for p in phrases:
            n = len(tok(p, add_special_tokens=False)["input_ids"])
            spans.append((pos, pos + n))
            pos += n + 1  # the phrase, then '.'
        if pos + 1 != len(ids):
            raise ValueError(f"object_count: cannot align the query tokens of {phrases!r}")
        return ids, spans

    @torch.no_grad()
    def counts(self, samples: Tensor, phrases: list[list[str]]) -> list[list[int]]:
        """Boxes found per phrase, for each image (images [B, 3, H, W] in [0, 1])."""
        out: list[list[int]] = []
        for start in range(0, samples.shape[0], self.batch_size):
            chunk, chunk_phrases = samples[start : start + self.batch_size], phrases[start : start + self.batch_size]
            texts = [". ".join(p) + "." if p else "." for p in chunk_phrases]
            inputs = self.processor(images=hf.pil_images(chunk), text=texts, padding=True, return_tensors="pt")
            inputs = {
                k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()
            }
            logits = self.model(**inputs).logits.float().sigmoid().cpu()  # [b, queries, text_len]
            for row, ps in enumerate(chunk_phrases):
                if not ps:
                    out.append([])
                    continue
                _, spans = self._query(ps)
                per_phrase = torch.stack([logits[row, :, a:b].amax(-1) for a, b in spans], dim=-1)  # [Q, P]
                best_token = logits[row, :, spans[0][0] : spans[-1][1]].amax(-1)
                score, which = per_phrase.max(-1)
                keep = (best_token >= self.box_threshold) & (score >= self.text_threshold)
                out.append(torch.bincount(which[keep], minlength=len(ps)).tolist())
        return out

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        if samples.shape[0] != len(prompts):
            raise ValueError(f"{samples.shape[0]} samples but {len(prompts)} prompts")
        groups = [prompt_groups(p) for p in prompts]
        found = self.counts(samples, [[g for g, _ in gs] for gs in groups])
        rewards = [
            -float(sum((n - f) ** 2 for (_, n), f in zip(gs, fs, strict=True)))
            for gs, fs in zip(groups, found, strict=True)
        ]
        return torch.tensor(rewards, dtype=torch.float64)
