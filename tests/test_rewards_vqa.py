"""VQAScore on tiny random-initialised vision-language models built in code (LLaVA with a chat template,
InstructBLIP without one): probabilities, batching, the template, and the value computed directly with the model."""

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.rewards.vqa import DEFAULT_TEMPLATE
from flowscale_ray.search import METHODS
from tests.tiny_models import instructblip_folder, save_llava, vlm_folder  # noqa: F401  (fixtures)

FOLDERS = ["vlm_folder", "instructblip_folder"]  # LLaVA (chat template), InstructBLIP (none; adds its image tokens)

PROMPTS = [Prompt(f"p{i}", t) for i, t in enumerate(["3 red circles", "a dog", "2 blue squares and 1 apple", "x"])]


def images(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def opts(folder, **kw):
    return {"path": str(folder), "device": "cpu", **kw}


def direct(reward, image, text, normalize="vocab"):
    """P(Yes) for one image and one question, straight from the model: no padding, the last position."""
    from flowscale_ray.rewards import hf_common as hf

    model, processor = reward.model, reward.processor
    if processor.chat_template is not None:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=hf.pil_images(image[None]), text=[text], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].double()
    yes, no = processor.tokenizer.convert_tokens_to_ids(["Yes", "No"])
    if normalize == "vocab":
        return torch.softmax(logits, -1)[yes]
    return torch.softmax(logits[[yes, no]], -1)[0]


@pytest.mark.parametrize("normalize", ["vocab", "yes_no"])
@pytest.mark.parametrize("folder", FOLDERS)
def test_vqa_score_is_the_yes_probability(folder, normalize, request):
    reward = build_reward("vqa_score", opts(request.getfixturevalue(folder), batch_size=4, normalize=normalize))
    x = images()
    scores = reward(x, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float64
    assert ((scores > 0) & (scores < 1)).all()
    # Batch of 4 == one by one (right padding: a row's answer position sees what it sees alone).
    singles = torch.cat([reward(x[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(scores, singles, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(scores, reward(x, PROMPTS), atol=0, rtol=0)
    # The direct computation with the model, on the paper's question.
    for i, p in enumerate(PROMPTS):
        expected = direct(reward, x[i], DEFAULT_TEMPLATE.format(prompt=p.text), normalize)
        assert float(scores[i]) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    # Different images give different scores (the image reaches the answer).
    assert scores.std() > 0
    assert (reward(images(seed=1), PROMPTS) - scores).abs().max() > 1e-6


def test_vqa_score_small_batches_and_the_full_vocabulary(vlm_folder):  # noqa: F811
    x = images()
    a = build_reward("vqa_score", opts(vlm_folder, batch_size=3))(x, PROMPTS)  # 3 + 1: two forward passes
    b = build_reward("vqa_score", opts(vlm_folder, batch_size=8))(x, PROMPTS)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    vocab = build_reward("vqa_score", opts(vlm_folder))
    pair = build_reward("vqa_score", opts(vlm_folder, normalize="yes_no"))
    # P(Yes) over the vocabulary <= P(Yes) / (P(Yes) + P(No)); equal only if every other token had no mass.
    assert (vocab(x, PROMPTS) < pair(x, PROMPTS)).all()


def test_vqa_score_uses_the_template(vlm_folder):  # noqa: F811
    template = "Is this {prompt}? Answer yes or no."
    reward = build_reward("vqa_score", opts(vlm_folder, template=template))
    default = build_reward("vqa_score", opts(vlm_folder))
    assert reward.question(PROMPTS[1]) == "Is this a dog? Answer yes or no."
    assert "Is this a dog? Answer yes or no." in reward.text(PROMPTS[1]) and "<image>" in reward.text(PROMPTS[1])
    x = images()
    scores = reward(x, PROMPTS)
    for i, p in enumerate(PROMPTS):
        assert float(scores[i]) == pytest.approx(float(direct(reward, x[i], template.format(prompt=p.text))), rel=1e-5)
    assert (scores - default(x, PROMPTS)).abs().max() > 1e-6
    # A prompt with braces is inserted as it is.
    assert reward.question("a {b}") == "Is this a {b}? Answer yes or no."


def test_vqa_score_without_a_chat_template(tmp_path, instructblip_folder):  # noqa: F811
    # A LLaVA processor expects the image placeholder in the text: the question follows it.
    folder = save_llava(tmp_path / "no-chat", chat_template=None)
    reward = build_reward("vqa_score", opts(folder))
    assert reward.text(PROMPTS[1]) == '<image>\nDoes this figure show "a dog"? Please answer yes or no.'
    scores = reward(images(), PROMPTS)
    assert ((scores > 0) & (scores < 1)).all()
    # InstructBLIP's processor puts its query tokens in itself: the text is the question alone.
    blip = build_reward("vqa_score", opts(instructblip_folder))
    assert blip.text(PROMPTS[1]) == 'Does this figure show "a dog"? Please answer yes or no.'
    inputs = blip.processor(images=[images(1)[0].permute(1, 2, 0).mul(255).byte().numpy()], text=[blip.text("a")])
    assert inputs["input_ids"][0][:4] == [blip.tokenizer.convert_tokens_to_ids("<image>")] * 4


def test_vqa_score_dtype_and_option_errors(vlm_folder, tmp_path):  # noqa: F811
    half = build_reward("vqa_score", opts(vlm_folder, dtype="bfloat16"))
    assert half.model.dtype == torch.bfloat16
    full = build_reward("vqa_score", opts(vlm_folder))
    torch.testing.assert_close(half(images(), PROMPTS), full(images(), PROMPTS), atol=0.02, rtol=0.1)
    for bad, match in [
        ({"template": "no placeholder"}, r"reward\.template: expected a string containing \{prompt\}"),
        ({"template": "{prompt} {other}"}, r"reward\.template: .* placeholder other than"),
        ({"normalize": "softmax"}, r"reward\.normalize: expected one of vocab, yes_no"),
        ({"answer": ""}, r"reward\.answer"),
        ({"negative": "Yes"}, r"reward\.negative: .* same token"),
        ({"batch_size": 0}, r"reward\.batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_reward("vqa_score", opts(vlm_folder, **bad))
    with pytest.raises(ValueError) as err:
        build_reward("vqa_score", opts(tmp_path / "nowhere"))
    assert "\n" not in str(err.value) and "config.json" in str(err.value)


def test_vqa_score_as_given_reward_and_held_out(vlm_folder):  # noqa: F811
    model = build_model("shapes")
    reward = build_reward("vqa_score", opts(vlm_folder))
    held = build_reward("vqa_score", opts(vlm_folder, template="Is there {prompt}? Answer yes or no."))
    spec = SamplerSpec(interpolant="linear", sde=False, steps=3)
    ex = InProcessExecutor(ParticleEngine(model, spec), reward, held_out=held)
    method = METHODS["bon"](METHODS["bon"].Config(n=3))
    prompts = [Prompt("a", "2 red circles"), Prompt("b", "1 blue square")]
    for r in ex.run([SearchTask(p, method, seed=0) for p in prompts]):
        assert 0 < r.reward < 1 and 0 < r.held_out < 1
        assert r.reward == pytest.approx(float(reward(r.image[None], [r.prompt])[0]), rel=1e-6)
        assert r.held_out == pytest.approx(float(held(r.image[None], [r.prompt])[0]), rel=1e-6)
        assert r.verifier_calls == 3 + 1  # three candidates, one final score
