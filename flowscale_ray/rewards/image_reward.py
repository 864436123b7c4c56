"""ImageReward (Xu et al. 2023, THUDM/ImageReward) without its package: BLIP through transformers, plus its MLP head.

The model: a BLIP ViT (ViT-L/16 at 224 px for the published weights) encodes the image; BLIP's BERT text
encoder (the "med" config: BERT-base with a cross-attention to the image tokens in every layer) encodes the
prompt while attending to them; an MLP head (Linear 768->1024->128->64->16->1, dropout between, no
activations) maps the text encoder's [CLS] output to one number; the score is (head(cls) - MEAN) / STD with the
published constants. The prompt is tokenized by BLIP's BERT tokenizer (bert-base-uncased plus [DEC] and [ENC])
padded to, and truncated at, 35 tokens; the image is resized (shortest side, bicubic) and center-cropped to the
ViT's size and normalised with CLIP's mean and std.

The folder `path` (what `convert` writes; weights read from safetensors only):
- `config.json`: a transformers BlipConfig (vision_config, text_config with encoder_hidden_size = the ViT width),
- `model.safetensors`: `vision_model.*` (BlipVisionModel) and `text_encoder.*` (BlipTextModel with cross-attention,
  no pooler), the names of transformers' BlipForImageTextRetrieval,
- `mlp.safetensors`: the head, `layers.{0,2,4,6,7}.{weight,bias}` (ImageReward's own `mlp.layers.*` names),
- `preprocessor_config.json`: a CLIPImageProcessor (resize, crop, mean, std),
- the tokenizer's files (`vocab.txt` or `tokenizer.json`, `tokenizer_config.json`, ...).

options: path, device (cpu | cuda | cuda:N | auto), dtype (default float32), batch_size (32). Like the CLIP
rewards it scores without autograd (images are quantised to 8 bits first, as the original scores PIL images).

Turn the official pickled `ImageReward.pt` into that folder once, offline (tensors only are unpickled):

    python -m flowscale_ray.rewards.image_reward convert ImageReward.pt OUT_DIR --tokenizer BERT_TOKENIZER_DIR
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowscale_ray.errors import first_line
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import hf_common as hf
from flowscale_ray.rewards.aesthetic import load_head  # the same Linear chain under layers.N (no activations)
from flowscale_ray.rewards.base import Reward
from flowscale_ray.rewards.clip import check_batch_size

# ImageReward.py (THUDM/ImageReward): rewards = (mlp(cls) - mean) / std.
MEAN = 0.16717362830052426
STD = 1.0333394966054072
MAX_LENGTH = 35  # the tokenizer call in ImageReward.score: padding="max_length", truncation=True, max_length=35
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

WEIGHTS_FILE = "model.safetensors"
HEAD_FILE = "mlp.safetensors"
PROCESSOR_FILE = "preprocessor_config.json"
WHAT = "an ImageReward folder (made from ImageReward.pt by `python -m flowscale_ray.rewards.image_reward convert`)"
FOLDER_FILES = (HEAD_FILE, PROCESSOR_FILE, "vocab.txt | tokenizer.json")  # + config.json, model.safetensors

# Original key (after the 'blip.' prefix) -> transformers key; None drops a tensor the score does not use.
# The vision names follow transformers' BLIP conversion script (convert_blip_original_pytorch_to_hf.py); the text
# encoder's names (BLIP's med.py BertModel) are transformers' BlipTextModel names already.
KEY_MAP: list[tuple[str, str | None]] = [
    (r"visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"visual_encoder\.norm\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"visual_encoder\.blocks\.(\d+)\.norm([12])\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.qkv.\2"),
    (
        r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)",
        r"vision_model.encoder.layers.\1.self_attn.projection.\2",
    ),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"text_encoder\.embeddings\.position_ids", None),  # a buffer (arange), rebuilt by transformers
    (r"text_encoder\.(.+)", r"text_encoder.\1"),
    (r"(vision_proj|text_proj)\.(weight|bias)", None),  # BLIP's contrastive projections: unused by the score
]


def original_key(key: str) -> tuple[str, str | None] | None:
    """Map one key of ImageReward.pt: ('model', transformers key), ('mlp', head key), ('model', None) for a tensor
    that is dropped on purpose, or None for a key this layout does not know."""
    key = key.removeprefix("module.")
    if m := re.fullmatch(r"mlp\.(layers\.\d+\.(?:weight|bias))", key):
        return "mlp", m.group(1)
    if not key.startswith("blip."):
        return None
    rest = key.removeprefix("blip.")
    for pattern, target in KEY_MAP:
        if m := re.fullmatch(pattern, rest):
            return "model", None if target is None else m.expand(target)
    return None


def image_reward_config() -> Any:
    """The published ImageReward architecture as a transformers BlipConfig: BLIP's ViT-L/16 at 224 px
    (blip.create_vit('large'): width 1024, depth 24, 16 heads, LayerNorm eps 1e-6) and its med_config.json
    (BERT-base, vocabulary 30524, cross-attention to the ViT's 1024-wide tokens, LayerNorm eps 1e-12)."""
    from transformers import BlipConfig

    vision = {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 16,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,  # timm's ViT in BLIP uses partial(nn.LayerNorm, eps=1e-6)
    }
    text = {
        "vocab_size": 30524,
        "hidden_size": 768,
        "encoder_hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 512,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "is_decoder": True,  # transformers builds the cross-attention layers only for a decoder config
    }
    return BlipConfig(vision_config=vision, text_config=text)


def image_processor_class() -> Any:
    """The PIL implementation of CLIP's preprocessing (the original resizes PIL images with torchvision, i.e.
    with PIL's bicubic filter): CLIPImageProcessorPil on transformers 5, the (PIL-based) CLIPImageProcessor before."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def resize_and_crop(image: Any, size: int) -> Any:
    """ImageReward's Resize(size, BICUBIC) + CenterCrop(size) on a PIL image, with torchvision's rounding (the new
    long side int(size * long / short); the crop offset round((excess) / 2), where transformers' crop floors).
    The processor's own resize and crop then leave the size x size image as it is."""
    from PIL import Image

    w, h = image.size
    if min(w, h) != size:
        long = int(size * max(w, h) / min(w, h))
        image = image.resize((size, long) if w <= h else (long, size), Image.Resampling.BICUBIC)
        w, h = image.size
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # Python rounds half to even, as torchvision
    return image.crop((left, top, left + size, top + size))


class ImageReward(Reward):
    """ImageReward's score of each (image, prompt) pair: (mlp(BLIP text [CLS] | image) - mean) / std."""

    name = "image_reward"

    def __init__(self, path: str, device: str = "auto", dtype: str | None = None, batch_size: int = 32) -> None:
        from transformers import AutoTokenizer, BlipConfig, BlipTextModel, BlipVisionModel

        self.batch_size = check_batch_size(batch_size)
        self.device, self.dtype = hf.device_and_dtype(device, dtype)
        source = hf.check_folder(path, WHAT, FOLDER_FILES)
        folder = Path(source).expanduser()
        if not folder.is_dir():  # check_folder passes hub ids through; this reward reads only local folders
            raise ValueError(f"reward.path: no such folder {source!r}; expected {WHAT}")
        if not (folder / WEIGHTS_FILE).is_file():  # check_folder accepts any *.safetensors (mlp.safetensors is one)
            raise ValueError(
                f"reward.path: {source!r} lacks {WEIGHTS_FILE} (weights are read from safetensors only); "
                f"expected {WHAT}"
            )
        config = hf.load(BlipConfig, source, WHAT)
        self.vision = BlipVisionModel(config.vision_config)
        self.text = BlipTextModel(config.text_config, add_pooling_layer=False)
        load_weights(folder / WEIGHTS_FILE, {"vision_model.": self.vision, "text_encoder.": self.text})
        for module in (self.vision, self.text):
            nn.Module.to(module, self.device, self.dtype).eval().requires_grad_(False)
        self.head = load_head(folder / HEAD_FILE, config.text_config.hidden_size).to(self.device)
        self.image_size = int(config.vision_config.image_size)
        self.image_processor = hf.load(image_processor_class(), source, WHAT)
        self.tokenizer = hf.load(AutoTokenizer, source, WHAT)

    @torch.no_grad()
    def cls_features(self, samples: Tensor, texts: list[str]) -> Tensor:
        """The text encoder's [CLS] output for each (image, text) pair, float32 [B, hidden]."""
        images = [resize_and_crop(im, self.image_size) for im in hf.pil_images(samples)]
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        image_tokens = self.vision(pixel_values=pixels.to(self.device, self.dtype)).last_hidden_state
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        out = self.text(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=self.device),
        )
        return out.last_hidden_state[:, 0].float()

    @torch.no_grad()
    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        if samples.shape[0] != len(prompts):
            raise ValueError(f"{samples.shape[0]} samples but {len(prompts)} prompts")
        texts = hf.texts_of(prompts)
        out = []
        for start in range(0, len(texts), self.batch_size):
            cls = self.cls_features(samples[start : start + self.batch_size], texts[start : start + self.batch_size])
            out.append(((self.head(cls).reshape(-1) - MEAN) / STD).cpu())
        return torch.cat(out).to(torch.float64) if out else torch.zeros(0, dtype=torch.float64)


def load_weights(file: Path, parts: dict[str, nn.Module]) -> None:
    """Load `file` (safetensors) into the modules, each from the keys under its prefix, every key accounted for."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(file))
    except Exception as exc:
        raise ValueError(f"reward.path: cannot read {str(file)!r} as safetensors: {first_line(exc)}") from None
    problems = state_problems(state, parts)
    if problems:
        raise ValueError(f"reward.path: {str(file)!r} does not match config.json: {'; '.join(problems)}")
    for prefix, module in parts.items():
        module.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})


def state_problems(state: dict[str, Tensor], parts: dict[str, nn.Module]) -> list[str]:
    """What keeps `state` from filling exactly the modules (each under its key prefix): missing, unexpected and
    misshapen tensors, one short phrase each."""
    problems = []
    for prefix, module in parts.items():
        own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        expected = module.state_dict()
        missing, extra = sorted(set(expected) - set(own)), sorted(set(own) - set(expected))
        if missing:
            problems.append(f"missing {len(missing)} {prefix}* tensor(s) (e.g. {prefix}{missing[0]})")
        if extra:
            problems.append(f"{len(extra)} unexpected {prefix}* tensor(s) (e.g. {prefix}{extra[0]})")
        wrong = [k for k in sorted(set(expected) & set(own)) if own[k].shape != expected[k].shape]
        if wrong:
            k = wrong[0]
            problems.append(
                f"{prefix}{k} has shape {tuple(own[k].shape)}, the config gives {tuple(expected[k].shape)}"
                + (f" ({len(wrong) - 1} more misshapen)" if len(wrong) > 1 else "")
            )
    others = sorted(k for k in state if not k.startswith(tuple(parts)))
    if others:
        problems.append(f"{len(others)} tensor(s) outside {' and '.join(p + '*' for p in parts)} (e.g. {others[0]})")
    return problems


# ------------------------------------------------------------------------------------------------ conversion


def read_checkpoint(file: Path) -> dict[str, Tensor]:
    """The state dict in ImageReward.pt, unpickled with torch's safe loader (tensors and plain containers only)."""
    if not file.is_file():
        raise ValueError(f"{str(file)!r}: no such file (the official ImageReward.pt from THUDM/ImageReward)")
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"{str(file)!r}: refused by torch.load(weights_only=True), which unpickles tensors only: {first_line(exc)}"
        ) from None
    if isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("state_dict", "model"):
        state = next(iter(state.values()))
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{str(file)!r}: expected a state dict (names -> tensors), got {type(state).__name__}")
    return state


def convert(
    checkpoint: str | Path, out_dir: str | Path, tokenizer: str | Path, config: str | Path | None = None
) -> str:
    """Write the folder the `image_reward` reward loads from ImageReward.pt; returns a one-line summary.

    `tokenizer`: a local folder with BLIP's text tokenizer files (bert-base-uncased's; [DEC] and [ENC] are added
    as BLIP's init_tokenizer does when missing). `config`: a JSON file holding a transformers BlipConfig, for a
    checkpoint of another size (default: the published architecture, `image_reward_config()`)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BlipConfig, BlipTextModel, BlipVisionModel

    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{str(out)!r} exists and is not an empty folder; give a new output folder")
    tok_dir = Path(tokenizer).expanduser()
    if not tok_dir.is_dir() or not any((tok_dir / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        raise ValueError(
            f"--tokenizer: {str(tok_dir)!r} is not a folder with vocab.txt or tokenizer.json "
            "(the files of the Hugging Face repo bert-base-uncased)"
        )
    if config is None:
        blip_config = image_reward_config()
    else:
        try:
            blip_config = BlipConfig.from_json_file(str(Path(config).expanduser()))
        except Exception as exc:
            raise ValueError(f"--config: cannot read {str(config)!r} as a BlipConfig JSON: {first_line(exc)}") from None
    state = read_checkpoint(Path(checkpoint).expanduser())

    model_state: dict[str, Tensor] = {}
    head_state: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        mapped = original_key(key)
        if mapped is None:
            unknown.append(key)
        elif mapped[1] is not None:
            (head_state if mapped[0] == "mlp" else model_state)[mapped[1]] = value.detach().contiguous()
    if not head_state:
        raise ValueError(f"{str(checkpoint)!r} has no mlp.layers.* tensors: not an ImageReward checkpoint")

    # Check everything before writing: the weights must fill exactly the modules the config describes
    # (modules built on the meta device: names and shapes only, no memory).
    with torch.device("meta"):
        parts: dict[str, nn.Module] = {
            "vision_model.": BlipVisionModel(blip_config.vision_config),
            "text_encoder.": BlipTextModel(blip_config.text_config, add_pooling_layer=False),
        }
    expected = {p + k for p, m in parts.items() for k in m.state_dict()}
    unknown += sorted(k for k in model_state if k not in expected)
    model_state = {k: v for k, v in model_state.items() if k in expected}
    problems = state_problems(model_state, parts)
    if problems:
        raise ValueError(
            f"{str(checkpoint)!r} does not fit the BLIP model (names after renaming): {'; '.join(problems)}; "
            "not an ImageReward checkpoint, or --config does not describe it"
        )
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    if tok.convert_tokens_to_ids("[DEC]") == tok.unk_token_id:
        tok.add_special_tokens({"bos_token": "[DEC]"})
    if tok.convert_tokens_to_ids("[ENC]") == tok.unk_token_id:
        tok.add_tokens(["[ENC]"], special_tokens=True)
    if len(tok) > blip_config.text_config.vocab_size:
        raise ValueError(
            f"--tokenizer: {len(tok)} tokens but the text encoder has {blip_config.text_config.vocab_size} "
            "embeddings; use bert-base-uncased's tokenizer"
        )

    out.mkdir(parents=True, exist_ok=True)
    blip_config.save_pretrained(str(out))
    save_file(model_state, str(out / WEIGHTS_FILE))
    save_file(head_state, str(out / HEAD_FILE))
    size = blip_config.vision_config.image_size
    image_processor_class()(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=3,  # PIL.Image.BICUBIC
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    ).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    summary = f"wrote {str(out)!r}: {len(model_state)} BLIP tensors, {len(head_state)} head tensors"
    if unknown:
        summary += f"; ignored {len(unknown)} unknown key(s) (e.g. {unknown[0]})"
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flowscale_ray.rewards.image_reward",
        description="Tools for the image_reward reward.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    c = sub.add_parser(
        "convert",
        help="Turn the official ImageReward.pt into the folder the reward loads (offline, tensors only).",
        description="Turn the official ImageReward.pt into the folder the image_reward reward loads: config.json, "
        "model.safetensors, mlp.safetensors, preprocessor_config.json and tokenizer files. The checkpoint is read "
        "with torch.load(weights_only=True): tensors only, never code. Nothing is downloaded.",
    )
    c.add_argument("checkpoint", help="ImageReward.pt (from the Hugging Face repo THUDM/ImageReward)")
    c.add_argument("out_dir", help="the new folder to write (must not exist or be empty)")
    c.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR",
        help="a folder with the tokenizer files of bert-base-uncased (vocab.txt, tokenizer_config.json, ...)",
    )
    c.add_argument(
        "--config",
        metavar="JSON",
        help="a transformers BlipConfig as JSON, for a checkpoint of another size (default: ViT-L/16 224 px + "
        "BLIP's med BERT-base, the published ImageReward)",
    )
    args = p.parse_args(argv)
    try:
        print(convert(args.checkpoint, args.out_dir, args.tokenizer, args.config))
    except (ValueError, OSError) as exc:
        print(f"image_reward convert: error: {first_line(exc, typed=False)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
