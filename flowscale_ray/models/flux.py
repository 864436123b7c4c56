"""FLUX (FluxPipeline components) behind the model contract.

Latent: the VAE latent [C, h, w] (C = transformer in_channels / 4, h = 2 * (height // (2 * vae_scale))),
unpacked; `velocity` packs it into FLUX's 2x2-patch token sequence [h/2 * w/2, 4C] with the matching
image position ids, calls the transformer at timestep t (diffusers passes sigma = t; the transformer
scales by 1000 itself) and unpacks the prediction. FLUX is a rectified flow on the linear path with
t = sigma: x_t = (1 - t) x0 + t noise, velocity noise - x0, exactly our convention.

Guidance: FLUX.1-dev is guidance-distilled, `guidance_scale` feeds its guidance embedding (one pass per
call); FLUX.1-schnell has no guidance embedding and takes no guidance_scale. Prompt encodings (CLIP pooled
+ T5 sequence) are computed once per prompt text and cached. `decode`: latent / scaling + shift -> VAE ->
[0, 1]. Resolution shift: `grid_shift` is exp(mu) of FLUX.1-dev's dynamic shift for this image size when
`resolution_shift` is set (else 1); the sampler applies it to its grid with `sampler.shift` (see
diffusers_common).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowscale_ray.models import diffusers_common as dc
from flowscale_ray.models.base import Condition

FLUX_LAYOUT = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


def pack(x: Tensor) -> Tensor:
    """[B, C, h, w] -> [B, h/2 * w/2, 4C] (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: Tensor, h: int, w: int) -> Tensor:
    """[B, h/2 * w/2, 4C] -> [B, C, h, w] (FluxPipeline._unpack_latents)."""
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int) -> Tensor:
    """Position ids [h/2 * w/2, 3] of the packed image tokens (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


def latent_size(height: int, width: int, vae_scale_factor: int) -> tuple[int, int]:
    return 2 * (height // (vae_scale_factor * 2)), 2 * (width // (vae_scale_factor * 2))


class FluxFlowModel(dc.DiffusersFlowModel):
    """A loaded FluxPipeline; see the module docstring."""

    def __init__(
        self,
        pipe: Any,
        height: int,
        width: int,
        guidance_scale: float | None,
        resolution_shift: bool,
        max_sequence_length: int,
        device: torch.device,
        dtype: torch.dtype,
        model_id: str,
    ) -> None:
        super().__init__(pipe, max_sequence_length, device, dtype, model_id)
        dc.check_size(height, width, 2 * self.vae_scale_factor)
        self.height, self.width = height, width
        self.h, self.w = latent_size(height, width, self.vae_scale_factor)
        self.latent_shape = (self.transformer.config.in_channels // 4, self.h, self.w)
        has_guidance = bool(self.transformer.config.guidance_embeds)
        if guidance_scale is not None and not has_guidance:
            raise ValueError(
                "model.guidance_scale: this FLUX transformer has no guidance embedding (FLUX.1-schnell); leave it unset"
            )
        self.guidance_scale = (3.5 if guidance_scale is None else float(guidance_scale)) if has_guidance else None
        seq_len = (self.h // 2) * (self.w // 2)
        self.grid_shift = dc.dynamic_shift(seq_len, dict(pipe.scheduler.config)) if resolution_shift else 1.0
        self.img_ids = image_ids(self.h, self.w).to(device, dtype)

    @torch.no_grad()
    def _encode_batch(self, prompts: list[str]) -> Condition:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return {"prompt_embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype)}

    @torch.no_grad()
    def velocity(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        b = x.shape[0]
        embeds = cond["prompt_embeds"].to(self.device, self.dtype)
        guidance = None
        if self.guidance_scale is not None:
            guidance = torch.full((b,), self.guidance_scale, device=self.device, dtype=torch.float32)
        out = self.transformer(
            hidden_states=pack(x.to(self.device, self.dtype)),
            timestep=t.to(self.device, torch.float32).reshape(-1).expand(b).to(self.dtype),
            guidance=guidance,
            pooled_projections=cond["pooled"].to(self.device, self.dtype),
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype),
            img_ids=self.img_ids,
            return_dict=False,
        )[0]
        return unpack(out, self.h, self.w)


def load_flux(
    path: str,
    dtype: str | None = None,
    device: str = "auto",
    height: int = 1024,
    width: int = 1024,
    guidance_scale: float | None = None,
    resolution_shift: bool = False,
    attention: str | None = None,
    max_sequence_length: int = 512,
) -> FluxFlowModel:
    """FLUX from a hub id or a local diffusers folder (see docs/models.md for the options)."""
    with dc.quiet_libraries():  # library warnings at import (optional packages) are not the user's business
        from diffusers import FluxPipeline

    if guidance_scale is not None and not isinstance(guidance_scale, int | float):
        raise ValueError(f"model.guidance_scale: expected a number, got {guidance_scale!r}")
    pipe, dev, torch_dtype = dc.load_checked(
        FluxPipeline, path, "FLUX", FLUX_LAYOUT, dtype, device, resolution_shift, attention, max_sequence_length
    )
    return FluxFlowModel(
        pipe, height, width, guidance_scale, resolution_shift, max_sequence_length, dev, torch_dtype, f"flux:{path}"
    )


def grid_shift_from_configs(options: dict[str, Any]) -> float:
    """`FluxFlowModel.grid_shift` for these options, from the folder's JSON configs (no weights loaded)."""
    if not options.get("resolution_shift", False):
        return 1.0
    path = options["path"]
    vae = dc.read_json(path, "vae", "config.json")
    scale = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    h, w = latent_size(int(options.get("height", 1024)), int(options.get("width", 1024)), scale)
    return dc.dynamic_shift((h // 2) * (w // 2), dc.read_json(path, "scheduler", "scheduler_config.json"))
