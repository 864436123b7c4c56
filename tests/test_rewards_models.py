"""Production rewards on tiny random-initialised stand-ins: shapes, batching, determinism, value ranges, errors."""

import pytest
import torch
from safetensors.torch import load_file

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.rewards.detection import parse_groups, prompt_groups
from flowscale_ray.rewards.jpeg import jpeg_size_kb
from flowscale_ray.search import METHODS
from tests.tiny_models import aesthetic_folder, clip_folder, detector_folder  # noqa: F401  (fixtures)

PROMPTS = [Prompt(f"p{i}", t) for i, t in enumerate(["3 red circles", "a dog", "2 blue squares and 1 apple", "x"])]


def images(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def check_batched(reward, samples, prompts, atol=1e-5):
    """Shape, finiteness, determinism, and batch of N == N singles."""
    a = reward(samples, prompts)
    b = reward(samples, prompts)
    singles = torch.cat([torch.as_tensor(reward(samples[i : i + 1], prompts[i : i + 1])) for i in range(len(prompts))])
    assert a.shape == (len(prompts),) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(a.double(), singles.double(), atol=atol, rtol=0)
    return a


# ------------------------------------------------------------------------------------------------ JPEG


def test_jpeg_rewards_order_flat_and_noisy_images():
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    both = torch.cat([flat, noisy])
    comp, incomp = build_reward("jpeg_compressibility"), build_reward("jpeg_incompressibility")
    c, i = comp(both, PROMPTS[:2]), incomp(both, PROMPTS[:2])
    assert c[0] > c[1] and i[1] > i[0]  # the flat image compresses better
    torch.testing.assert_close(c, -i)
    assert (c < 0).all() and i[1] > 5 * i[0]
    assert i[0] == pytest.approx(jpeg_size_kb(flat)[0]) and 0 < i[0] < 2  # kB of a flat 64x64 JPEG
    check_batched(comp, images(), PROMPTS, atol=0)
    with pytest.raises(ValueError, match=r"reward\.quality"):
        build_reward("jpeg_compressibility", {"quality": 0})


# ------------------------------------------------------------------------------------------------ CLIP


def test_clip_score(clip_folder):  # noqa: F811
    reward = build_reward("clip_score", {"path": str(clip_folder), "device": "cpu", "batch_size": 3})
    scores = check_batched(reward, images(), PROMPTS)
    assert (scores.abs() <= 1 + 1e-6).all()
    # The prompt matters, and the score is the cosine of the two normalised embeddings.
    other = reward(images(), [Prompt("q", "9 green squares")] * 4)
    assert (other - scores).abs().max() > 1e-4
    img, txt = reward.clip.images(images()), reward.clip.texts([p.text for p in PROMPTS])
    torch.testing.assert_close(scores, (img * txt).sum(-1).double(), atol=1e-6, rtol=0)
    half = build_reward("clip_score", {"path": str(clip_folder), "device": "cpu", "dtype": "bfloat16"})
    assert half.clip.model.dtype == torch.bfloat16
    torch.testing.assert_close(half(images(), PROMPTS), scores, atol=0.05, rtol=0)


# ------------------------------------------------------------------------------------------- aesthetic


def test_aesthetic_is_the_head_on_normalised_clip_image_embeddings(aesthetic_folder):  # noqa: F811
    reward = build_reward("aesthetic", {"path": str(aesthetic_folder), "device": "cpu", "batch_size": 3})
    scores = check_batched(reward, images(), PROMPTS)
    # Recompute independently: the head's Linear layers applied in order to e / |e|.
    state = load_file(str(aesthetic_folder / "aesthetic_head.safetensors"))
    h = reward.clip.images(images()).double()
    for idx in (0, 2, 4, 6, 7):
        h = h @ state[f"layers.{idx}.weight"].double().T + state[f"layers.{idx}.bias"].double()
    torch.testing.assert_close(scores, h.reshape(-1), atol=1e-5, rtol=0)
    assert scores.std() > 0  # different images, different scores


def test_aesthetic_head_must_be_safetensors(aesthetic_folder, tmp_path):  # noqa: F811
    import shutil

    folder = tmp_path / "no-head"
    shutil.copytree(aesthetic_folder, folder)
    (folder / "aesthetic_head.safetensors").unlink()
    (folder / "sac+logos+ava1-l14-linearMSE.pth").write_bytes(b"pickle")
    with pytest.raises(ValueError) as err:
        build_reward("aesthetic", {"path": str(folder), "device": "cpu"})
    msg = str(err.value)
    assert "\n" not in msg and str(folder) in msg and "aesthetic_head.safetensors" in msg
    (folder / "aesthetic_head.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read .* as safetensors"):
        build_reward("aesthetic", {"path": str(folder), "device": "cpu"})


# --------------------------------------------------------------------------------------- object count


def test_quantity_prompts_are_parsed():
    assert parse_groups("3 red circles and 2 blue squares") == [("red circle", 3), ("blue square", 2)]
    assert parse_groups("two boxes, a dog with 4 cherries.") == [("box", 2), ("dog", 1), ("cherry", 4)]
    assert parse_groups("1 cat and 2 cats") == [("cat", 3)]
    assert parse_groups("a photo") == [("photo", 1)]  # "a" counts as one, like the built-in parser
    assert parse_groups("photo of the sea") == [] and parse_groups("") == []
    meta = Prompt("m", "ignored", metadata={"counts": {"Red Circles": 0, "dog": 2}})
    assert prompt_groups(meta) == [("red circle", 0), ("dog", 2)]


def test_object_count(detector_folder):  # noqa: F811
    opts = {"path": str(detector_folder), "device": "cpu", "batch_size": 3}
    reward = build_reward("object_count", opts)
    scores = check_batched(reward, images(), PROMPTS, atol=0)
    assert (scores <= 0).all() and torch.equal(scores, scores.round())
    # Nothing passes threshold 1: reward = -(sum of squared requested counts); "x" names nothing: 0.
    none = build_reward("object_count", {**opts, "box_threshold": 1.0, "text_threshold": 1.0})
    assert none(images(), PROMPTS).tolist() == [-9.0, -1.0, -(4 + 1), 0.0]
    # Threshold 0: every query box (12) counts, each for exactly one phrase.
    every = build_reward("object_count", {**opts, "box_threshold": 0.0, "text_threshold": 0.0})
    found = every.counts(images(), [["red circle"], ["dog"], ["blue square", "apple"], []])
    assert [sum(f) for f in found] == [12, 12, 12, 0]
    assert every(images(2), PROMPTS[:2]).tolist() == [-81.0, -121.0]  # (3 - 12)^2, (1 - 12)^2
    with pytest.raises(ValueError, match=r"reward\.box_threshold"):
        build_reward("object_count", {**opts, "box_threshold": 2})


# ----------------------------------------------------------------------------------- combined, errors


def test_weighted_sum_is_the_weighted_combination(clip_folder):  # noqa: F811
    clip_opts = {"path": str(clip_folder), "device": "cpu"}
    terms = [
        {"name": "jpeg_compressibility", "weight": 0.5},
        {"name": "clip_score", "weight": -2, "options": clip_opts},
    ]
    combined = build_reward("weighted_sum", {"terms": terms})
    x = images()
    expected = 0.5 * build_reward("jpeg_compressibility")(x, PROMPTS) - 2 * build_reward("clip_score", clip_opts)(
        x, PROMPTS
    )
    torch.testing.assert_close(check_batched(combined, x, PROMPTS), expected, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match=r"reward\.terms\[0\]: unknown key\(s\) wieght"):
        build_reward("weighted_sum", {"terms": [{"name": "jpeg_compressibility", "wieght": 1}]})
    with pytest.raises(ValueError, match=r"reward\.terms"):
        build_reward("weighted_sum", {"terms": []})


@pytest.mark.parametrize("name", ["clip_score", "pickscore", "hps", "aesthetic", "object_count", "vqa_score"])
def test_missing_model_folder_is_one_line_naming_the_path(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as err:
        build_reward(name, {"path": str(missing), "device": "cpu"})
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "config.json" in msg and "safetensors" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"lacks config\.json") as err:
        build_reward(name, {"path": str(empty), "device": "cpu"})
    with pytest.raises(TypeError, match="bogus"):
        build_reward(name, {"path": str(empty), "bogus": 1})
    with pytest.raises(ValueError, match=r"reward\.dtype"):
        build_reward(name, {"path": str(empty), "dtype": "float64", "device": "cpu"})


@pytest.mark.parametrize("name", ["clip_score", "pickscore", "hps"])
def test_a_model_reward_as_held_out_evaluator(clip_folder, name):  # noqa: F811
    model = build_model("shapes")
    held = build_reward(name, {"path": str(clip_folder), "device": "cpu"})
    spec = SamplerSpec(interpolant="linear", sde=False, steps=3)
    ex = InProcessExecutor(ParticleEngine(model, spec), build_reward("jpeg_compressibility"), held_out=held)
    method = METHODS["bon"](METHODS["bon"].Config(n=2))
    prompts = [Prompt("a", "2 red circles"), Prompt("b", "1 blue square")]
    results = sorted(ex.run([SearchTask(p, method, seed=0) for p in prompts]), key=lambda r: r.prompt.id)
    for r in results:
        assert r.held_out == pytest.approx(float(held(r.image[None], [r.prompt])[0]), abs=1e-6)
        assert r.reward == pytest.approx(float(build_reward("jpeg_compressibility")(r.image[None], [r.prompt])[0]))


# ------------------------------------------------------------------------------- PickScore and HPS v2


def test_pickscore_is_the_models_logit_scale_times_the_cosine(clip_folder):  # noqa: F811
    opts = {"path": str(clip_folder), "device": "cpu", "batch_size": 3}
    pick, hps, cos = build_reward("pickscore", opts), build_reward("hps", opts), build_reward("clip_score", opts)
    scores = check_batched(pick, images(), PROMPTS)
    # The reference computation: exp(logit_scale) * normalised text @ normalised image, from the model itself.
    model, processor = pick.clip.model, pick.clip.processor
    from flowscale_ray.rewards import hf_common as hf

    with torch.no_grad():
        img = model.get_image_features(**processor(images=hf.pil_images(images()), return_tensors="pt"))
        txt = model.get_text_features(
            **processor.tokenizer([p.text for p in PROMPTS], padding=True, return_tensors="pt")
        )
        img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
        img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
        expected = model.logit_scale.exp() * (img * txt).sum(-1)
    torch.testing.assert_close(scores, expected.double(), atol=1e-5, rtol=1e-6)
    assert pick.scale == pytest.approx(float(model.logit_scale.exp())) and pick.scale != 1.0
    torch.testing.assert_close(scores / pick.scale, cos(images(), PROMPTS), atol=1e-7, rtol=0)
    # HPS v2 reports the cosine of its own model's embeddings.
    torch.testing.assert_close(check_batched(hps, images(), PROMPTS), cos(images(), PROMPTS), atol=0, rtol=0)
    assert pick.name == "pickscore" and hps.name == "hps"


def test_pickscore_uses_the_folders_own_weights(clip_folder, tmp_path):  # noqa: F811
    from tests.tiny_models import save_clip

    other = save_clip(tmp_path / "other-clip", seed=1)
    a = build_reward("pickscore", {"path": str(clip_folder), "device": "cpu"})(images(), PROMPTS)
    b = build_reward("pickscore", {"path": str(other), "device": "cpu"})(images(), PROMPTS)
    assert (a - b).abs().max() > 1e-3
