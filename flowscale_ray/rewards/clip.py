"""CLIP-based scores: scale x cosine similarity between the CLIP embeddings of the image and of its prompt.

- `clip_score`: the cosine itself, in [-1, 1] (e.g. openai/clip-vit-large-patch14).
- `pickscore`: PickScore (Kirstain et al. 2023), a CLIP-H fine-tuned on Pick-a-Pic preferences
  (yuvalkirstain/PickScore_v1, processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K): the model's own
  exp(logit_scale) x cosine, as its reference code scores (about 100 x cosine, typically 18..24).
- `hps`: HPS v2 / v2.1 (Wu et al. 2023), a CLIP-H fine-tuned on human preferences: the cosine, as the hpsv2
  package reports it (typically 0.2..0.35). Its weights must be in the transformers CLIPModel layout.

Each model brings its own preprocessing (resize, crop, mean and std) in its processor config.
options: path (folder or hub id of a transformers CLIPModel with its processor), device (cpu | cuda | cuda:N |
auto), dtype (default float32), batch_size. Images are quantised to 8 bits and go through the model's own
CLIPProcessor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import hf_common as hf
from flowscale_ray.rewards.base import Reward


class ClipEmbedder:
    """A loaded CLIPModel + CLIPProcessor; normalised image and text embeddings."""

    def __init__(self, path: str, device: str, dtype: str | None, what: str, extra_files: tuple[str, ...] = ()):
        from transformers import CLIPModel, CLIPProcessor

        self.device, self.dtype = hf.device_and_dtype(device, dtype)
        source = hf.check_folder(path, what, ("processor_config.json | preprocessor_config.json", *extra_files))
        model = hf.load(CLIPModel, source, what, dtype=self.dtype, use_safetensors=True)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.processor = hf.load(CLIPProcessor, source, what)

    @torch.no_grad()
    def images(self, samples: Tensor) -> Tensor:
        pixels = self.processor(images=hf.pil_images(samples), return_tensors="pt")["pixel_values"]
        feats = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        feats = getattr(feats, "pooler_output", feats)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> Tensor:
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        feats = self.model.get_text_features(
            input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
        )
        feats = getattr(feats, "pooler_output", feats)
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"reward.batch_size: expected a positive integer, got {batch_size!r}")
    return batch_size


class ClipScore(Reward):
    name = "clip_score"
    what = "a CLIP model"

    def __init__(self, path: str, device: str = "auto", dtype: str | None = None, batch_size: int = 32) -> None:
        self.batch_size = check_batch_size(batch_size)
        self.clip = ClipEmbedder(path, device, dtype, self.what)
        self.scale = self.score_scale()

    def score_scale(self) -> float:
        """What the cosine is multiplied by."""
        return 1.0

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        if samples.shape[0] != len(prompts):
            raise ValueError(f"{samples.shape[0]} samples but {len(prompts)} prompts")
        texts = hf.texts_of(prompts)
        out = []
        for start in range(0, len(texts), self.batch_size):
            img = self.clip.images(samples[start : start + self.batch_size])
            txt = self.clip.texts(texts[start : start + self.batch_size])
            out.append((img * txt).sum(-1).cpu())
        values = torch.cat(out).to(torch.float64) if out else torch.zeros(0, dtype=torch.float64)
        return values * self.scale if self.scale != 1.0 else values


class PickScore(ClipScore):
    """PickScore: exp(logit_scale) x cosine, the model's own learned temperature."""

    name = "pickscore"
    what = "a PickScore CLIP model (e.g. yuvalkirstain/PickScore_v1 with its processor)"

    def score_scale(self) -> float:
        return float(self.clip.model.logit_scale.detach().float().exp())


class HPSv2(ClipScore):
    """HPS v2 / v2.1: the cosine of the preference-tuned CLIP's embeddings (as the hpsv2 package reports)."""

    name = "hps"
    what = "an HPS v2 CLIP-H model in the transformers CLIPModel layout"
