"""Tiny random-initialised stand-ins for the production models, built in code (nothing is downloaded).

Each builder returns an object of the real class (FluxPipeline, StableDiffusion3Pipeline, CLIPModel,
GroundingDinoForObjectDetection) with a few thousand parameters, in eval mode, seeded so that two builds
are identical; `save_*` writes it with `save_pretrained` (safetensors) into a folder that our adapters
then load exactly like a real checkpoint. Tokenizers are built from a character vocabulary.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

CHARS = string.ascii_lowercase + string.digits


def clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer():
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + c, -1.0) for c in CHARS] + [(c, -2.0) for c in CHARS]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def clip_text_config(with_projection: bool = False):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=2 + 2 * len(CHARS),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=3 + 2 * len(CHARS),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(cfg).eval()


def vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.5,
        shift_factor=0.1,
    ).eval()


def flux_pipeline(guidance_embeds: bool = True, seed: int = 0):
    """A FluxPipeline (FLUX.1-dev layout: guidance embedding, dynamic resolution shift) of tiny size."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae(latent_channels=1),
        text_encoder=CLIPTextModel(clip_text_config()).eval(),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )


def sd3_pipeline(seed: int = 0, shift: float = 3.0):
    """A StableDiffusion3Pipeline (two CLIP encoders with projection + T5) of tiny size."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
    ).eval()
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=vae(latent_channels=4),
        text_encoder=CLIPTextModelWithProjection(clip_text_config()).eval(),
        tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config()).eval(),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(),
        tokenizer_3=t5_tokenizer(),
        transformer=transformer,
    )


def clip_model(seed: int = 0, image_size: int = 32, projection_dim: int = 16):
    """(CLIPModel, CLIPProcessor) of tiny size; the processor resizes any image to `image_size`."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    text = clip_text_config().to_dict()
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    ).to_dict()
    text["projection_dim"] = projection_dim
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())


DETECTOR_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "and"]
DETECTOR_WORDS += ["red", "blue", "green", "yellow", "circle", "square", "apple", "dog", *CHARS]


def grounding_dino(seed: int = 0, image_size: int = 32):
    """(GroundingDinoForObjectDetection, GroundingDinoProcessor) of tiny size (Swin + BERT backbones)."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(seed)
    backbone = SwinConfig(
        image_size=image_size,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=2,
        out_features=["stage1", "stage2"],
    )
    text = BertConfig(
        vocab_size=len(DETECTOR_WORDS),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    cfg = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,  # GroupNorm(32, d_model) inside
        encoder_layers=1,
        decoder_layers=2,  # the box heads of decoder layers are tied: at least 2
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=12,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    model = GroundingDinoForObjectDetection(cfg).eval()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(DETECTOR_WORDS)})
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size})
    return model, GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)


def aesthetic_head(in_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random MLP head with the LAION predictor's key names (layers.0/2/4/6/7, no activations between)."""
    g = torch.Generator().manual_seed(seed)
    dims = [(in_dim, 24), (24, 12), (12, 8), (8, 4), (4, 1)]
    out = {}
    for idx, (a, b) in zip((0, 2, 4, 6, 7), dims, strict=True):
        out[f"layers.{idx}.weight"] = torch.randn(b, a, generator=g) / a**0.5
        out[f"layers.{idx}.bias"] = torch.randn(b, generator=g) * 0.1
    return out


def save_flux(folder: Path, **kwargs) -> Path:
    flux_pipeline(**kwargs).save_pretrained(str(folder), safe_serialization=True)
    return folder


def save_sd3(folder: Path, **kwargs) -> Path:
    sd3_pipeline(**kwargs).save_pretrained(str(folder), safe_serialization=True)
    return folder


def save_with_processor(folder: Path, model, processor) -> Path:
    """A model (safetensors) and its processor, saved into one folder as the loaders expect."""
    model.save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))
    return folder


def save_clip(folder: Path, **kwargs) -> Path:
    return save_with_processor(folder, *clip_model(**kwargs))


# ------------------------------------------------------------------------------------------ pytest fixtures
# Import these into a test module (`from tests.tiny_models import flux_folder`) to use them there.


@pytest.fixture(scope="session")
def flux_folder(tmp_path_factory) -> Path:
    return save_flux(tmp_path_factory.mktemp("flux") / "tiny-flux")


@pytest.fixture(scope="session")
def sd3_folder(tmp_path_factory) -> Path:
    return save_sd3(tmp_path_factory.mktemp("sd3") / "tiny-sd3")


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def save_grounding_dino(folder: Path, **kwargs) -> Path:
    return save_with_processor(folder, *grounding_dino(**kwargs))


def save_aesthetic(folder: Path, **kwargs) -> Path:
    """A tiny CLIP plus `aesthetic_head.safetensors` (the layout the aesthetic reward expects)."""
    from safetensors.torch import save_file

    save_clip(folder, **kwargs)
    model, _ = clip_model(**kwargs)
    save_file(aesthetic_head(model.config.projection_dim), str(folder / "aesthetic_head.safetensors"))
    return folder


@pytest.fixture(scope="session")
def detector_folder(tmp_path_factory) -> Path:
    return save_grounding_dino(tmp_path_factory.mktemp("gdino") / "tiny-grounding-dino")


@pytest.fixture(scope="session")
def aesthetic_folder(tmp_path_factory) -> Path:
    return save_aesthetic(tmp_path_factory.mktemp("aesthetic") / "tiny-aesthetic")


# ------------------------------------------------------------------------------- vision-language model (VQA)
VLM_SPECIAL = ["<pad>", "<s>", "</s>", "<image>"]
VLM_WORDS = ["Yes", "No", *string.ascii_letters, *string.digits, *string.punctuation, " ", "\n"]
VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def vlm_tokenizer():
    """A fast tokenizer over characters, with "Yes" and "No" as whole tokens and LLaVA's special tokens."""
    import tokenizers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VLM_SPECIAL + VLM_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=tokenizers.Regex(r"Yes|No|."), behavior="isolated")
    tok.add_special_tokens(VLM_SPECIAL)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def llava(seed: int = 0, image_size: int = 16, chat_template: str | None = VLM_CHAT_TEMPLATE):
    """(LlavaForConditionalGeneration, LlavaProcessor) of tiny size: CLIP vision tower + Llama decoder."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = vlm_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=2,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=4,
        projection_dim=16,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=chat_template,
        patch_size=4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return model, processor


def save_llava(folder: Path, **kwargs) -> Path:
    return save_with_processor(folder, *llava(**kwargs))


@pytest.fixture(scope="session")
def vlm_folder(tmp_path_factory) -> Path:
    return save_llava(tmp_path_factory.mktemp("vlm") / "tiny-llava")


def instructblip(seed: int = 0, image_size: int = 16):
    """(InstructBlipForConditionalGeneration, InstructBlipProcessor) of tiny size: ViT + Q-Former + OPT decoder.
    The processor has no chat template and puts the query tokens before the text itself."""
    from transformers import (
        BertTokenizer,
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        OPTConfig,
    )

    torch.manual_seed(seed)
    tokenizer = vlm_tokenizer()
    vision = InstructBlipVisionConfig(
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=2,
        num_hidden_layers=1,
        image_size=image_size,
        patch_size=4,
        initializer_range=0.5,  # BLIP's default (1e-10) makes a random tower ignore the image
    )
    qformer = InstructBlipQFormerConfig(
        vocab_size=len(DETECTOR_WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        encoder_hidden_size=16,
        cross_attention_frequency=1,
        max_position_embeddings=64,
        initializer_range=0.5,
    )
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=24,
        num_attention_heads=2,
        max_position_embeddings=256,
        word_embed_proj_dim=16,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg = InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = InstructBlipForConditionalGeneration(cfg).eval()
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        qformer_tokenizer=BertTokenizer(vocab={w: i for i, w in enumerate(DETECTOR_WORDS)}),
        num_query_tokens=4,
    )
    return model, processor


def save_instructblip(folder: Path, **kwargs) -> Path:
    return save_with_processor(folder, *instructblip(**kwargs))


@pytest.fixture(scope="session")
def instructblip_folder(tmp_path_factory) -> Path:
    return save_instructblip(tmp_path_factory.mktemp("vlm") / "tiny-instructblip")


# ------------------------------------------------------------------------------------------------ ImageReward


def image_reward_blip(seed: int = 0, image_size: int = 16):
    """(BlipConfig, BlipVisionModel, BlipTextModel with cross-attention, MLP head state, BertTokenizer) of tiny
    size: the parts of ImageReward (BLIP ViT + BLIP's BERT text encoder + the MLP head on its [CLS] output)."""
    from transformers import BertTokenizer, BlipConfig, BlipTextModel, BlipVisionModel

    torch.manual_seed(seed)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(DETECTOR_WORDS)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # as BLIP's init_tokenizer does
    tokenizer.add_tokens(["[ENC]"], special_tokens=True)
    vision = {
        "hidden_size": 16,
        "intermediate_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": 4,
        "layer_norm_eps": 1e-6,
        "initializer_range": 0.2,  # BLIP's default (1e-10) makes a random tower ignore the image
    }
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "encoder_hidden_size": 16,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": tokenizer.bos_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "initializer_range": 0.2,
    }
    config = BlipConfig(vision_config=vision, text_config=text)
    vision_model = BlipVisionModel(config.vision_config).eval()
    text_model = BlipTextModel(config.text_config, add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(seed)
    head = {}
    for idx, (a, b) in zip((0, 2, 4, 6, 7), [(32, 24), (24, 12), (12, 8), (8, 4), (4, 1)], strict=True):
        head[f"layers.{idx}.weight"] = torch.randn(b, a, generator=g) / a**0.5
        head[f"layers.{idx}.bias"] = torch.randn(b, generator=g) * 0.1
    return config, vision_model, text_model, head, tokenizer


def save_image_reward(folder: Path, **kwargs) -> Path:
    """A tiny ImageReward folder in the layout the image_reward reward loads (what its `convert` writes)."""
    from safetensors.torch import save_file

    from flowscale_ray.rewards.image_reward import CLIP_MEAN, CLIP_STD, image_processor_class

    config, vision, text, head, tokenizer = image_reward_blip(**kwargs)
    folder.mkdir(parents=True)
    config.save_pretrained(str(folder))
    weights = {f"vision_model.{k}": v for k, v in vision.state_dict().items()}
    weights |= {f"text_encoder.{k}": v for k, v in text.state_dict().items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / "model.safetensors"))
    save_file(head, str(folder / "mlp.safetensors"))
    size = config.vision_config.image_size
    image_processor_class()(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=3,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def image_reward_folder(tmp_path_factory) -> Path:
    return save_image_reward(tmp_path_factory.mktemp("image-reward") / "tiny-image-reward")
