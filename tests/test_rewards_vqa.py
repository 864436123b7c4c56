"""VQAScore on tiny random-initialised vision-language models built in code (LLaVA with a chat template,
InstructBLIP without one; InstructBLIP and BLIP-2 with a T5 encoder-decoder): probabilities, batching, the
template, and the value computed directly with the model."""

import functools
import json
import shutil
import string

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.rewards.vqa import DEFAULT_TEMPLATE
from flowscale_ray.search import METHODS
from tests.tiny_models import instructblip_folder, save_llava, save_with_processor, vlm_folder  # noqa: F401

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


# ------------------------------------------------------------------------- encoder-decoder language models (T5)
# InstructBLIP-FlanT5 and BLIP-2-FlanT5 in miniature: the image and the question are the encoder's input, the
# answer is read at the decoder's first position. The tokenizer is a SentencePiece-style (Unigram, "▁" word
# prefix) T5 tokenizer in which "Yes" encodes as "▁Yes" "</s>", as in Flan-T5's vocabulary.
T5_CHARS = string.ascii_letters + string.digits + string.punctuation


def t5_vqa_tokenizer():
    from tokenizers import AddedToken
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + w, -1.0) for w in ("Yes", "No", "yes", "no")]
    pieces += [("\u2581" + c, -2.0) for c in T5_CHARS] + [(c, -2.0) for c in T5_CHARS]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    return tokenizer


def blip_t5(kind, seed=0, image_size=16):
    """A tiny (InstructBlip|Blip2)ForConditionalGeneration with a T5 language model, and its processor."""
    import transformers as tf

    from tests.tiny_models import DETECTOR_WORDS

    torch.manual_seed(seed)
    tokenizer = t5_vqa_tokenizer()
    prefix = {"instructblip": "InstructBlip", "blip2": "Blip2"}[kind]
    vision = getattr(tf, f"{prefix}VisionConfig")(
        hidden_size=16,
        intermediate_size=24,
        num_attention_heads=2,
        num_hidden_layers=1,
        image_size=image_size,
        patch_size=4,
        initializer_range=0.5,  # BLIP's default (1e-10) makes a random tower ignore the image
    )
    qformer = getattr(tf, f"{prefix}QFormerConfig")(
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
    text = tf.T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_kv=8,
        d_ff=24,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # as in T5
        tie_word_embeddings=False,
    )
    cfg = getattr(tf, f"{prefix}Config")(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = getattr(tf, f"{prefix}ForConditionalGeneration")(cfg).eval()
    image_processor = tf.BlipImageProcessor(size={"height": image_size, "width": image_size})
    if kind == "instructblip":
        qformer_tokenizer = tf.BertTokenizer(vocab={w: i for i, w in enumerate(DETECTOR_WORDS)})
        processor = tf.InstructBlipProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            qformer_tokenizer=qformer_tokenizer,
            num_query_tokens=4,
        )
    else:
        processor = tf.Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=4)
    return model, processor


@pytest.fixture(scope="module")
def t5_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm-t5")
    return {kind: save_with_processor(root / kind, *blip_t5(kind)) for kind in ("instructblip", "blip2")}


@functools.cache
def load_fresh(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def reference_t5(folder, image, question, normalize="vocab", answer="Yes", negative="No"):
    """The score computed independently of the reward: the saved model and processor loaded afresh, one image, one
    forward pass with decoder_input_ids = [decoder_start_token_id]; for `sequence`, the answer as decoder labels and
    exp(-loss), as the published VQAScore code computes it for CLIP-FlanT5 / InstructBLIP-FlanT5."""
    from flowscale_ray.rewards import hf_common as hf

    model, processor = load_fresh(str(folder))
    inputs = processor(images=hf.pil_images(image[None]), text=[question], return_tensors="pt")
    tok = processor.tokenizer
    with torch.no_grad():
        if normalize == "sequence":
            labels = tok(answer, return_tensors="pt")["input_ids"]  # "▁Yes" "</s>"
            return torch.exp(-model(**inputs, labels=labels).loss.double())
        start = model.config.text_config.decoder_start_token_id
        logits = model(**inputs, decoder_input_ids=torch.tensor([[start]])).logits[0, 0].double()
    yes, no = tok.convert_tokens_to_ids(["\u2581" + answer, "\u2581" + negative])
    assert yes != tok.unk_token_id and no != tok.unk_token_id
    if normalize == "vocab":
        return torch.softmax(logits, -1)[yes]
    return torch.softmax(logits[[yes, no]], -1)[0]


@pytest.mark.parametrize(
    "kind, normalize",
    [
        ("instructblip", "vocab"),
        ("instructblip", "yes_no"),
        ("instructblip", "sequence"),
        ("blip2", "vocab"),
        ("blip2", "sequence"),
    ],
)
def test_vqa_score_encoder_decoder_is_the_yes_probability(t5_folders, kind, normalize):
    folder = t5_folders[kind]
    reward = build_reward("vqa_score", opts(folder, batch_size=4, normalize=normalize))
    assert reward.encoder_decoder and reward.decoder_start_id == 0
    assert reward.tokenizer.convert_ids_to_tokens([reward.answer_id]) == ["\u2581Yes"]
    assert reward.answer_ids == reward.tokenizer.convert_tokens_to_ids(["\u2581Yes", "</s>"])
    # The processor puts the query tokens in itself: the text is the question alone.
    assert reward.text(PROMPTS[1]) == 'Does this figure show "a dog"? Please answer yes or no.'
    x = images()
    scores = reward(x, PROMPTS)
    assert scores.shape == (4,) and scores.dtype == torch.float64
    assert ((scores > 0) & (scores < 1)).all()
    singles = torch.cat([reward(x[i : i + 1], PROMPTS[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(scores, singles, atol=1e-6, rtol=1e-5)
    for i, p in enumerate(PROMPTS):
        expected = reference_t5(folder, x[i], DEFAULT_TEMPLATE.format(prompt=p.text), normalize)
        assert float(scores[i]) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    assert scores.std() > 0
    assert ((reward(images(seed=1), PROMPTS) - scores).abs() / scores).max() > 1e-3  # the image reaches the answer


def test_vqa_score_encoder_decoder_template_answer_batches_and_dtype(t5_folders):
    folder = t5_folders["instructblip"]
    x = images(5)
    prompts = [*PROMPTS, Prompt("p4", "a much longer prompt than the others, 7 apples")]
    # Batches of 2 + 2 + 1 (padding differs between batches) equal one batch of 8.
    a = build_reward("vqa_score", opts(folder, batch_size=2))(x, prompts)
    b = build_reward("vqa_score", opts(folder, batch_size=8))(x, prompts)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # The template and the answer (t2v_metrics' InstructBLIP settings: a "Question: " prefix, answer "yes").
    template = 'Question: Does this figure show "{prompt}"? Please answer yes or no.'
    reward = build_reward("vqa_score", opts(folder, template=template, answer="yes", negative="no"))
    assert reward.text(PROMPTS[1]) == 'Question: Does this figure show "a dog"? Please answer yes or no.'
    scores = reward(x, prompts)
    for i, p in enumerate(prompts):
        expected = reference_t5(folder, x[i], template.format(prompt=p.text), answer="yes", negative="no")
        assert float(scores[i]) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)
    assert (scores - b).abs().max() > 1e-6
    # The whole answer ("▁Yes" "</s>") vs its first token: the geometric mean with P(</s> | ▁Yes) differs.
    sequence = build_reward("vqa_score", opts(folder, normalize="sequence"))(x, prompts)
    assert (sequence - b).abs().max() > 1e-4
    half = build_reward("vqa_score", opts(folder, dtype="bfloat16"))
    assert half.model.dtype == torch.bfloat16
    torch.testing.assert_close(half(x, prompts), b, atol=0.02, rtol=0.1)


def test_vqa_score_encoder_decoder_as_given_reward_and_held_out(t5_folders):
    model = build_model("shapes")
    reward = build_reward("vqa_score", opts(t5_folders["blip2"]))
    held = build_reward("vqa_score", opts(t5_folders["instructblip"], normalize="sequence"))
    spec = SamplerSpec(interpolant="linear", sde=False, steps=3)
    ex = InProcessExecutor(ParticleEngine(model, spec), reward, held_out=held)
    method = METHODS["bon"](METHODS["bon"].Config(n=3))
    (r,) = ex.run([SearchTask(Prompt("a", "2 red circles"), method, seed=0)])
    assert 0 < r.reward < 1 and 0 < r.held_out < 1
    assert r.reward == pytest.approx(float(reward(r.image[None], [r.prompt])[0]), rel=1e-6)
    assert r.held_out == pytest.approx(float(held(r.image[None], [r.prompt])[0]), rel=1e-6)
    assert r.verifier_calls == 3 + 1  # three candidates, one final score


def test_vqa_score_encoder_decoder_errors(t5_folders, vlm_folder, tmp_path):  # noqa: F811
    # normalize=sequence is the encoder-decoder reference computation; a decoder-only model is refused in one line.
    with pytest.raises(ValueError, match=r"reward\.normalize: 'sequence' is for encoder-decoder models") as err:
        build_reward("vqa_score", opts(vlm_folder, normalize="sequence"))
    assert "\n" not in str(err.value)
    # A config without decoder_start_token_id (nowhere: text config, config, generation config).
    folder = tmp_path / "no-start"
    shutil.copytree(t5_folders["blip2"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"].pop("decoder_start_token_id")
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "generation_config.json").unlink()
    with pytest.raises(ValueError, match=r"reward\.path: .* names no decoder_start_token_id") as err:
        build_reward("vqa_score", opts(folder))
    assert "\n" not in str(err.value)
    # A tokenizer that puts a start-of-text token before the answer (as BART-style decoders do): the decoder's
    # first position would not be the answer's first word, so the folder is refused.
    folder = tmp_path / "bos"
    shutil.copytree(t5_folders["instructblip"], folder)
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["post_processor"]["single"].insert(0, {"SpecialToken": {"id": "<unk>", "type_id": 0}})
    tok["post_processor"]["special_tokens"]["<unk>"] = {"id": "<unk>", "ids": [2], "tokens": ["<unk>"]}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(ValueError, match=r"puts \['<unk>'\] before 'Yes'; .* supports T5-style decoders") as err:
        build_reward("vqa_score", opts(folder))
    assert "\n" not in str(err.value)
