"""ImageReward on tiny random-initialised BLIP parts: the score against a forward written by hand from the
original checkpoint's key layout, batching, conversion of a pickled state dict, and bad folders and files."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.rewards.image_reward import image_reward_config, main
from flowscale_ray.search import METHODS
from tests.tiny_models import image_reward_blip, image_reward_folder, save_image_reward  # noqa: F401  (fixture)

PROMPTS = [Prompt(f"p{i}", t) for i, t in enumerate(["3 red circles", "a dog", "2 blue squares and 1 apple", "x"])]
# The published constants of ImageReward.py: rewards = (mlp(cls) - mean) / std.
MEAN, STD = 0.16717362830052426, 1.0333394966054072
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one intra-op thread is faster than two, by far on a busy machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def images(n=4, h=32, w=32, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def opts(folder, **kw):
    return {"path": str(folder), "device": "cpu", **kw}


# ---------------------------------------------------------------------- an independent reference computation


def reference_pixels(samples, size):
    """ImageReward's transform written out: 8-bit PIL image, Resize(size, BICUBIC) of the shortest side (new long
    side int(size * long / short)), CenterCrop(size) at offset round(excess / 2), ToTensor, CLIP Normalize."""
    out = []
    for a in (samples * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy():
        im = Image.fromarray(a)
        w, h = im.size
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), Image.BICUBIC)
        top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)  # half to even, as torchvision
        x = torch.from_numpy(np.asarray(im.crop((left, top, left + size, top + size))).copy()).permute(2, 0, 1)
        x = x.double() / 255
        out.append(
            (x - torch.tensor(CLIP_MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
        )
    return torch.stack(out)


def original_forward(state, pixels, input_ids, attention_mask, config):
    """ImageReward.score_gard written from the ORIGINAL checkpoint's names (timm-style ViT of BLIP, BLIP's med.py
    BERT with cross-attention, the MLP head), in float64."""
    s = {k: v.double() for k, v in state.items() if v.is_floating_point()}
    vc, tc = config.vision_config, config.text_config

    def ln(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], s[name + ".weight"], s[name + ".bias"], eps)

    def lin(x, name):
        return F.linear(x, s[name + ".weight"], s[name + ".bias"])

    def attend(q, k, v, heads, bias=None):
        b, n, d = q.shape

        def split(t):
            return t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)

        a = split(q) @ split(k).transpose(-1, -2) / (d // heads) ** 0.5
        a = a if bias is None else a + bias
        return (a.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)

    e = "blip.visual_encoder."
    x = F.conv2d(
        pixels.double(), s[e + "patch_embed.proj.weight"], s[e + "patch_embed.proj.bias"], stride=vc.patch_size
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[e + "cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + s[e + "pos_embed"]
    for i in range(vc.num_hidden_layers):
        blk = f"{e}blocks.{i}."
        q, k, v = lin(ln(x, blk + "norm1", 1e-6), blk + "attn.qkv").chunk(3, dim=-1)
        x = x + lin(attend(q, k, v, vc.num_attention_heads), blk + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, blk + "norm2", 1e-6), blk + "mlp.fc1")), blk + "mlp.fc2")
    image_embeds = ln(x, e + "norm", 1e-6)

    t = "blip.text_encoder."
    seq = input_ids.shape[1]
    h = s[t + "embeddings.word_embeddings.weight"][input_ids] + s[t + "embeddings.position_embeddings.weight"][:seq]
    h = ln(h, t + "embeddings.LayerNorm", 1e-12)
    pad_bias = (1.0 - attention_mask.double())[:, None, None, :] * -1e9
    heads = tc.num_attention_heads
    for i in range(tc.num_hidden_layers):
        lay = f"{t}encoder.layer.{i}."
        sa = lay + "attention."
        a = attend(lin(h, sa + "self.query"), lin(h, sa + "self.key"), lin(h, sa + "self.value"), heads, pad_bias)
        h = ln(lin(a, sa + "output.dense") + h, sa + "output.LayerNorm", 1e-12)
        ca = lay + "crossattention."
        c = attend(
            lin(h, ca + "self.query"), lin(image_embeds, ca + "self.key"), lin(image_embeds, ca + "self.value"), heads
        )
        h = ln(lin(c, ca + "output.dense") + h, ca + "output.LayerNorm", 1e-12)
        f = lin(F.gelu(lin(h, lay + "intermediate.dense")), lay + "output.dense")
        h = ln(f + h, lay + "output.LayerNorm", 1e-12)
    out = h[:, 0]
    for idx in (0, 2, 4, 6, 7):  # Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear: no activations
        out = lin(out, f"mlp.layers.{idx}")
    return (out.reshape(-1) - MEAN) / STD


def original_state(seed=0):
    """A tiny ImageReward state dict in the ORIGINAL layout (as ImageReward.pt holds it), from tiny transformers
    modules whose names are mapped back by hand, plus the tensors the original has and the score does not use."""
    config, vision, text, head, tokenizer = image_reward_blip(seed=seed)
    renames = [
        ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
        ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
        ("vision_model.embeddings.patch_embedding", "visual_encoder.patch_embed.proj"),
        ("vision_model.post_layernorm", "visual_encoder.norm"),
        ("vision_model.encoder.layers.", "visual_encoder.blocks."),
        (".layer_norm", ".norm"),
        (".self_attn.projection", ".attn.proj"),
        (".self_attn.qkv", ".attn.qkv"),
    ]
    state = {}
    for k, v in vision.state_dict().items():
        k = "vision_model." + k
        for a, b in renames:
            k = k.replace(a, b)
        state["blip." + k] = v.clone()
    state |= {"blip.text_encoder." + k: v.clone() for k, v in text.state_dict().items()}
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(config.text_config.max_position_embeddings)[None]
    g = torch.Generator().manual_seed(seed + 100)
    state["blip.vision_proj.weight"] = torch.randn(8, config.vision_config.hidden_size, generator=g)
    state["blip.vision_proj.bias"] = torch.zeros(8)
    state["blip.text_proj.weight"] = torch.randn(8, config.text_config.hidden_size, generator=g)
    state["blip.text_proj.bias"] = torch.zeros(8)
    state |= {"mlp." + k: v for k, v in head.items()}
    return config, state, tokenizer


# ---------------------------------------------------------------------------------------------- the score


def test_the_score_is_imagerewards_formula_batched(image_reward_folder):  # noqa: F811
    reward = build_reward("image_reward", opts(image_reward_folder, batch_size=3))
    assert reward.name == "image_reward"
    x = images()
    a, b = reward(x, PROMPTS), reward(x, PROMPTS)
    singles = torch.cat([reward(x[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    assert a.shape == (4,) and a.dtype == torch.float64 and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a, singles, atol=1e-6, rtol=0)
    assert a.std() > 1e-3  # different images and prompts, different scores
    other = reward(x, [Prompt("q", "9 green squares")] * 4)
    assert (other - a).abs().max() > 1e-3  # the prompt matters

    # The same computation from the original layout's weights, written by hand (pixels and tokens prepared here).
    config, state, tokenizer = original_state(seed=0)
    tok = tokenizer(
        [p.text for p in PROMPTS], padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    assert tok["input_ids"].shape == (4, 35)
    pixels = reference_pixels(x, config.vision_config.image_size)
    expected = original_forward(state, pixels, tok["input_ids"], tok["attention_mask"], config)
    torch.testing.assert_close(a, expected, atol=1e-5, rtol=0)
    assert reward.cls_features(x, [p.text for p in PROMPTS]).shape == (4, 32)


def test_non_square_images_are_resized_and_cropped_like_the_original(image_reward_folder):  # noqa: F811
    # 32 x 54 -> shortest side 16: 16 x 27; the excess 11 is cropped at round(5.5) = 6 (transformers' crop floors:
    # 5). And 16 x 27 itself (no resize).
    reward = build_reward("image_reward", opts(image_reward_folder))
    config, state, tokenizer = original_state(seed=0)
    tok = tokenizer(
        [p.text for p in PROMPTS[:2]], padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    for h, w in ((32, 54), (16, 27), (54, 32)):
        x = images(2, h, w, seed=3)
        pixels = reference_pixels(x, 16)
        expected = original_forward(state, pixels, tok["input_ids"], tok["attention_mask"], config)
        torch.testing.assert_close(reward(x, PROMPTS[:2]), expected, atol=1e-5, rtol=0)
    shifted = reference_pixels(images(2, 16, 27, seed=3)[..., :26], 16)  # columns 5..20: the floored crop
    moved = original_forward(state, shifted, tok["input_ids"], tok["attention_mask"], config)
    assert (moved - reward(images(2, 16, 27, seed=3), PROMPTS[:2])).abs().max() > 1e-4


def test_prompts_are_truncated_at_35_tokens(image_reward_folder):  # noqa: F811
    reward = build_reward("image_reward", opts(image_reward_folder))
    x = images(1)
    words = [str(i % 10) for i in range(33)]  # one token each: [CLS] + 33 + [SEP] = 35
    base = reward(x, [Prompt("a", " ".join([*words, "red", "dog"]))])
    same = reward(x, [Prompt("b", " ".join([*words, "blue", "apple", "and"]))])
    torch.testing.assert_close(base, same, atol=0, rtol=0)
    changed = reward(x, [Prompt("c", " ".join([*words[:-1], "red"]))])
    assert (changed - base).abs().max() > 1e-4


def test_device_and_dtype_from_the_options(image_reward_folder):  # noqa: F811
    full = build_reward("image_reward", opts(image_reward_folder))
    half = build_reward("image_reward", opts(image_reward_folder, dtype="bfloat16"))
    assert half.vision.dtype == torch.bfloat16 and half.text.dtype == torch.bfloat16
    assert full.vision.dtype == torch.float32 and full.vision.device.type == "cpu"
    torch.testing.assert_close(half(images(), PROMPTS), full(images(), PROMPTS), atol=0.05, rtol=0)
    assert all(not p.requires_grad for m in (half.vision, half.text, half.head) for p in m.parameters())
    with pytest.raises(ValueError, match=r"reward\.batch_size"):
        build_reward("image_reward", opts(image_reward_folder, batch_size=0))


def test_as_held_out_evaluator(image_reward_folder):  # noqa: F811
    model = build_model("shapes")
    held = build_reward("image_reward", opts(image_reward_folder))
    spec = SamplerSpec(interpolant="linear", sde=False, steps=3)
    ex = InProcessExecutor(ParticleEngine(model, spec), build_reward("jpeg_compressibility"), held_out=held)
    method = METHODS["bon"](METHODS["bon"].Config(n=2))
    prompts = [Prompt("a", "2 red circles"), Prompt("b", "1 blue square")]
    results = sorted(ex.run([SearchTask(p, method, seed=0) for p in prompts]), key=lambda r: r.prompt.id)
    for r in results:
        assert r.held_out == pytest.approx(float(held(r.image[None], [r.prompt])[0]), abs=1e-6)
        assert r.reward == pytest.approx(float(build_reward("jpeg_compressibility")(r.image[None], [r.prompt])[0]))
    assert results[0].held_out != pytest.approx(results[1].held_out)


# ---------------------------------------------------------------------------------------------- conversion


def write_checkpoint(tmp_path, state, tokenizer, config):
    pt, tok_dir, cfg = tmp_path / "ImageReward.pt", tmp_path / "bert-tokenizer", tmp_path / "blip-config.json"
    torch.save(state, pt)
    tokenizer.save_pretrained(str(tok_dir))
    config.to_json_file(str(cfg))
    return pt, tok_dir, cfg


def test_convert_the_original_checkpoint(tmp_path, capsys, image_reward_folder):  # noqa: F811
    config, state, tokenizer = original_state(seed=0)
    pt, tok_dir, cfg = write_checkpoint(tmp_path, state, tokenizer, config)
    out = tmp_path / "converted"
    assert main(["convert", str(pt), str(out), "--tokenizer", str(tok_dir), "--config", str(cfg)]) == 0
    said = capsys.readouterr().out.strip()
    assert said.startswith("wrote") and "\n" not in said and "ignored" not in said
    weights, head = load_file(str(out / "model.safetensors")), load_file(str(out / "mlp.safetensors"))
    assert sorted(head) == [f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("bias", "weight")]
    assert not any("proj" in k and "projection" not in k and "patch" not in k for k in weights)  # vision/text_proj
    assert "text_encoder.embeddings.position_ids" not in weights

    # The converted folder scores exactly like the folder saved from the same transformers modules, and like the
    # original computation from the original names.
    x = images()
    got = build_reward("image_reward", opts(out))(x, PROMPTS)
    torch.testing.assert_close(got, build_reward("image_reward", opts(image_reward_folder))(x, PROMPTS), atol=0, rtol=0)
    tok = tokenizer(
        [p.text for p in PROMPTS], padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    expected = original_forward(state, reference_pixels(x, 16), tok["input_ids"], tok["attention_mask"], config)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    # A DataParallel prefix and a key the layout does not know are accepted; the unknown one is reported.
    state2 = {"module." + k: v for k, v in state.items()} | {"blip.itm_head.weight": torch.zeros(2, 32)}
    pt2 = tmp_path / "wrapped.pt"
    torch.save(state2, pt2)
    assert main(["convert", str(pt2), str(tmp_path / "c2"), "--tokenizer", str(tok_dir), "--config", str(cfg)]) == 0
    said = capsys.readouterr().out
    assert "ignored 1 unknown key(s) (e.g. blip.itm_head.weight)" in said
    torch.testing.assert_close(build_reward("image_reward", opts(tmp_path / "c2"))(x, PROMPTS), got, atol=0, rtol=0)


def test_the_default_config_is_the_published_architecture():
    from transformers import BlipTextModel, BlipVisionModel

    config = image_reward_config()
    with torch.device("meta"):
        vision = BlipVisionModel(config.vision_config)
        text = BlipTextModel(config.text_config, add_pooling_layer=False)
    n_vision = sum(p.numel() for p in vision.parameters())
    assert 303e6 < n_vision < 305e6  # ViT-L/16 at 224 px
    state = text.state_dict()
    assert state["embeddings.word_embeddings.weight"].shape == (30524, 768)
    assert state["encoder.layer.11.crossattention.self.key.weight"].shape == (768, 1024)  # cross-attends to ViT-L
    assert "encoder.layer.12.attention.self.query.weight" not in state
    assert vision.state_dict()["embeddings.position_embedding"].shape == (1, 197, 1024)
    assert config.vision_config.layer_norm_eps == 1e-6 and config.text_config.layer_norm_eps == 1e-12


class Touch:
    """Unpickling this would create a file: torch.load(weights_only=True) must refuse it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_conversion_refuses_bad_inputs_in_one_line(tmp_path, capsys):
    config, state, tokenizer = original_state(seed=0)
    pt, tok_dir, cfg = write_checkpoint(tmp_path, state, tokenizer, config)

    def fails(*argv, match):
        assert main(["convert", *map(str, argv)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and err.startswith("image_reward convert: error:")
        assert match in err, err
        return err

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"blip.x": torch.zeros(1), "payload": Touch(marker)}, evil)
    err = fails(evil, tmp_path / "o1", "--tokenizer", tok_dir, "--config", cfg, match="weights_only=True")
    assert str(evil) in err and not marker.exists() and not (tmp_path / "o1").exists()

    fails(tmp_path / "nope.pt", tmp_path / "o2", "--tokenizer", tok_dir, match="no such file")
    # The tiny checkpoint does not fit the published ViT-L architecture (the default config).
    fails(pt, tmp_path / "o3", "--tokenizer", tok_dir, match="does not fit the BLIP model")
    no_head = tmp_path / "no-head.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("mlp.")}, no_head)
    fails(no_head, tmp_path / "o4", "--tokenizer", tok_dir, "--config", cfg, match="no mlp.layers")
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if "blocks.1." not in k}, partial)
    fails(partial, tmp_path / "o5", "--tokenizer", tok_dir, "--config", cfg, match="missing")
    fails(pt, tmp_path / "o6", "--tokenizer", tmp_path, "--config", cfg, match="--tokenizer")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    fails(pt, tmp_path / "full", "--tokenizer", tok_dir, "--config", cfg, match="not an empty folder")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))


# ---------------------------------------------------------------------------------------------- bad folders


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def one_line_error(folder, match):
    with pytest.raises(ValueError) as err:
        build_reward("image_reward", opts(folder))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("reward.path:") and match in msg, msg
    return msg


def test_bad_folders_give_one_line_naming_the_file(image_reward_folder, tmp_path):  # noqa: F811
    msg = one_line_error(tmp_path / "nowhere", "no such folder")
    assert "config.json" in msg and "mlp.safetensors" in msg and "convert" in msg

    no_head = copy_folder(image_reward_folder, tmp_path / "no-head")
    (no_head / "mlp.safetensors").unlink()
    (no_head / "ImageReward.pt").write_bytes(b"pickle")
    assert str(no_head) in one_line_error(no_head, "lacks mlp.safetensors")

    no_config = copy_folder(image_reward_folder, tmp_path / "no-config")
    (no_config / "config.json").unlink()
    one_line_error(no_config, "lacks config.json")

    bin_weights = copy_folder(image_reward_folder, tmp_path / "bin")
    (bin_weights / "model.safetensors").rename(bin_weights / "pytorch_model.bin")
    one_line_error(bin_weights, "lacks model.safetensors")

    garbage = copy_folder(image_reward_folder, tmp_path / "garbage")
    (garbage / "model.safetensors").write_bytes(b"not safetensors")
    one_line_error(garbage, "cannot read")

    other = save_image_reward(tmp_path / "other-size", image_size=32)  # 64 patches: another position embedding
    mismatched = copy_folder(image_reward_folder, tmp_path / "mismatched")
    shutil.copy(other / "config.json", mismatched / "config.json")
    one_line_error(mismatched, "does not match config.json: vision_model.embeddings.position_embedding has shape")

    bad_head = copy_folder(image_reward_folder, tmp_path / "bad-head")
    (bad_head / "mlp.safetensors").write_bytes(b"garbage")
    one_line_error(bad_head, "mlp.safetensors")

    with pytest.raises(ValueError, match=r"reward\.path: no such folder 'THUDM/ImageReward'"):
        build_reward("image_reward", {"path": "THUDM/ImageReward", "device": "cpu"})
    with pytest.raises(TypeError, match="bogus"):
        build_reward("image_reward", {"path": str(image_reward_folder), "bogus": 1})
    with pytest.raises(ValueError, match=r"reward\.dtype"):
        build_reward("image_reward", opts(image_reward_folder, dtype="float64"))
