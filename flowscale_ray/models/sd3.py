"""Stable Diffusion 3 / 3.5 (StableDiffusion3Pipeline components) behind the model contract.

Latent: the VAE latent [C, height / vae_scale, width / vae_scale]. SD3 is a rectified flow on the linear
path with t = sigma; its transformer takes the timestep sigma * 1000, which `velocity` passes.

Classifier-free guidance (`guidance_scale` > 1, default 7): each velocity call runs the transformer once
on [unconditional; conditional] rows and returns v_u + g (v_c - v_u), as the pipeline does; the
unconditional embedding is the encoding of the empty prompt (the pipeline's default negative prompt),
computed once. Prompt encodings (two CLIP encoders + T5, text_encoder_3 optional) are cached per text.
`grid_shift`: the scheduler's static shift (3.0 for SD3), or the resolution-dependent exp(mu) when
`resolution_shift` is set; the sampler applies it with `sampler.shift` (see diffusers_common).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowscale_ray.models import diffusers_common as dc
from flowscale_ray.models.base import Condition

SD3_LAYOUT = (
    "transformer",
    "vae",
    "text_encoder",
    "tokenizer",
    "text_encoder_2",
    "tokenizer_2",
    "scheduler",
)  # text_encoder_3 / tokenizer_3 (T5) are optional, as in diffusers


def _grid_shift(scheduler_config: dict[str, Any], seq_len: int, resolution_shift: bool) -> float:
    if resolution_shift:
        cfg = {"max_shift": 1.16, **scheduler_config}  # SD3 pipeline's default max_shift
        return dc.dynamic_shift(seq_len, cfg)
    return float(scheduler_config.get("shift", 1.0))


class SD3FlowModel(dc.DiffusersFlowModel):
    """A loaded StableDiffusion3Pipeline; see the module docstring."""

    def __init__(
        self,
        pipe: Any,
        height: int,
        width: int,
        guidance_scale: float,
        resolution_shift: bool,
        max_sequence_length: int,
        device: torch.device,
        dtype: torch.dtype,
        model_id: str,
    ) -> None:
        super().__init__(pipe, max_sequence_length, device, dtype, model_id)
        patch = self.transformer.config.patch_size
        dc.check_size(height, width, self.vae_scale_factor * patch)
        self.height, self.width = height, width
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        self.latent_shape = (self.transformer.config.in_channels, h, w)
        self.guidance_scale = float(guidance_scale)
        self.grid_shift = _grid_shift(dict(pipe.scheduler.config), (h // patch) * (w // patch), resolution_shift)
        self._null: Condition | None = None

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @torch.no_grad()
    def _encode_batch(self, prompts: list[str]) -> Condition:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return {"prompt_embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype)}

    def null_condition(self) -> Condition:
        """The unconditional (empty prompt) row, encoded once."""
        if self._null is None:
            self._null = self._encode_batch([""])
        return self._null

    @torch.no_grad()
    def velocity(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        b = x.shape[0]
        x = x.to(self.device, self.dtype)
        timestep = (t.to(self.device, torch.float32).reshape(-1).expand(b) * 1000).to(self.dtype)
        embeds = cond["prompt_embeds"].to(self.device, self.dtype)
        pooled = cond["pooled"].to(self.device, self.dtype)
        if self.cfg:
            null = self.null_condition()
            embeds = torch.cat([null["prompt_embeds"].expand(b, -1, -1), embeds])
            pooled = torch.cat([null["pooled"].expand(b, -1), pooled])
            x, timestep = torch.cat([x, x]), torch.cat([timestep, timestep])
        out = self.transformer(
            hidden_states=x,
            timestep=timestep,
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        if not self.cfg:
            return out
        v_uncond, v_cond = out.chunk(2)
        return v_uncond + self.guidance_scale * (v_cond - v_uncond)


def load_sd3(
    path: str,
    dtype: str | None = None,
    device: str = "auto",
    height: int = 1024,
    width: int = 1024,
    guidance_scale: float = 7.0,
    resolution_shift: bool = False,
    attention: str | None = None,
    max_sequence_length: int = 256,
) -> SD3FlowModel:
    """SD3 from a hub id or a local diffusers folder (see docs/models.md for the options)."""
    with dc.quiet_libraries():  # library warnings at import (optional packages) are not the user's business
        from diffusers import StableDiffusion3Pipeline

    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float) or guidance_scale < 0:
        raise ValueError(f"model.guidance_scale: expected a number >= 0 (<= 1: no guidance), got {guidance_scale!r}")
    pipe, dev, torch_dtype = dc.load_checked(
        StableDiffusion3Pipeline,
        path,
        "SD3",
        SD3_LAYOUT,
        dtype,
        device,
        resolution_shift,
        attention,
        max_sequence_length,
    )
    return SD3FlowModel(
        pipe, height, width, guidance_scale, resolution_shift, max_sequence_length, dev, torch_dtype, f"sd3:{path}"
    )


def grid_shift_from_configs(options: dict[str, Any]) -> float:
    """`SD3FlowModel.grid_shift` for these options, from the folder's JSON configs (no weights loaded)."""
    path = options["path"]
    vae = dc.read_json(path, "vae", "config.json")
    patch = dc.read_json(path, "transformer", "config.json").get("patch_size", 2)
    scale = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    h, w = int(options.get("height", 1024)) // scale, int(options.get("width", 1024)) // scale
    scheduler = dc.read_json(path, "scheduler", "scheduler_config.json")
    return _grid_shift(scheduler, (h // patch) * (w // patch), bool(options.get("resolution_shift", False)))
