"""The LAION aesthetic predictor: an MLP head on the normalised CLIP ViT-L/14 image embedding.

The folder `path` holds a transformers CLIPModel (openai/clip-vit-large-patch14 for the real predictor)
with its processor, plus the head as `aesthetic_head.safetensors` with the public predictor's key names
(`layers.0`, `layers.2`, `layers.4`, `layers.6`, `layers.7`: Linear 768->1024->128->64->16->1; the
Dropout layers between them have no weights and there are no activations). The head is read with
safetensors only; docs/models.md shows how to convert the public .pth once. Score: head(e / |e|), about
1..10 for the real predictor.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward
from flowscale_ray.rewards.clip import ClipEmbedder, check_batch_size

HEAD_FILE = "aesthetic_head.safetensors"


def load_head(file: Path, in_dim: int) -> nn.Sequential:
    """The chain of Linear layers stored under layers.{i}.weight / .bias, in index order."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(file))
    except Exception as exc:
        raise ValueError(f"reward.path: cannot read {str(file)!r} as safetensors: {exc}") from None
    indices = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
    if not indices:
        raise ValueError(f"reward.path: {str(file)!r} has no layers.N.weight tensors (the LAION head's key names)")
    layers: list[nn.Module] = []
    dim = in_dim
    for i in indices:
        w, b = state[f"layers.{i}.weight"], state.get(f"layers.{i}.bias")
        if w.ndim != 2 or w.shape[1] != dim:
            raise ValueError(f"reward.path: layers.{i}.weight has shape {tuple(w.shape)}, expected [*, {dim}]")
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        lin.weight.data.copy_(w)
        if b is not None:
            lin.bias.data.copy_(b)
        layers.append(lin)
        dim = w.shape[0]
    if dim != 1:
        raise ValueError(f"reward.path: the head in {str(file)!r} ends with {dim} outputs, expected 1")
    return nn.Sequential(*layers).eval().requires_grad_(False)


class AestheticReward(Reward):
    name = "aesthetic"

    def __init__(self, path: str, device: str = "auto", dtype: str | None = None, batch_size: int = 32) -> None:
        self.batch_size = check_batch_size(batch_size)
        what = "a CLIP ViT-L/14 model plus the aesthetic MLP head"
        self.clip = ClipEmbedder(path, device, dtype, what, extra_files=(HEAD_FILE,))
        folder = Path(path).expanduser()
        if not (folder / HEAD_FILE).is_file():  # a hub id: the head must still be a local file next to it
            raise ValueError(f"reward.path: {HEAD_FILE} not found in {str(folder)!r}; expected {what}")
        self.head = load_head(folder / HEAD_FILE, self.clip.model.config.projection_dim).to(self.clip.device)

    @torch.no_grad()
    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        out = []
        for start in range(0, samples.shape[0], self.batch_size):
            emb = self.clip.images(samples[start : start + self.batch_size])
            out.append(self.head(emb).reshape(-1).cpu())
        return torch.cat(out).to(torch.float64) if out else torch.zeros(0, dtype=torch.float64)
