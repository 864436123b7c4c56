"""VQAScore with any Hugging Face vision-language model: the probability that the model answers "Yes" to a
templated question about the image.

Lin et al., "Evaluating Text-to-Visual Generation with Image-to-Text Generation" (2024): VQAScore(image,
prompt) = P("Yes" | image, 'Does this figure show "{prompt}"? Please answer yes or no.'), computed by the paper
with CLIP-FlanT5. Here the model is any image-text-to-text model that transformers loads with
`AutoModelForImageTextToText` from a local folder with its `AutoProcessor`:
- decoder-only language models (LLaVA, Qwen2-VL / Qwen2.5-VL, InstructBLIP-Vicuna, ...): the next-token
  distribution after the question, read at the last prompt token;
- encoder-decoder language models (InstructBLIP-FlanT5, BLIP-2-FlanT5, ...): the image and the question are the
  encoder's input and the distribution is read at the decoder's first output position, with
  `decoder_input_ids` = [decoder_start_token_id] (one decoder step).

The question goes through the processor's chat template as one user turn holding the image and the question,
with the generation prompt added. Without a chat template the text is the question alone when the processor puts
the image tokens in itself (InstructBLIP and other BLIP-style processors), else "<image token>\\n{question}"
(checked once at load, by processing a blank image). Rows are right-padded, so a row's last token sees exactly
what it sees alone (causal attention, positions from 0; an encoder masks the padding out): a row scores the same
alone or in a batch, up to floating-point rounding of the batched kernels.

Score (`normalize`):
- `vocab` (default): the softmax over the whole vocabulary at the answer position, probability of the first
  token of `answer`. This is the paper's definition (and what its reference code computes for decoder-only
  models, where the answer "Yes" is one token with no end token), so scores are comparable with published
  VQAScores; probability the model puts on other tokens ("yes", " Yes", "The")
  counts as not-yes.
- `yes_no`: P(answer) / (P(answer) + P(negative)), the first tokens of "Yes" and "No" only. Less sensitive to
  how a chatty or small model formats its answer, but not the paper's number.
- `sequence` (encoder-decoder models only): exp of the mean log-probability of every token of `answer` as the
  tokenizer encodes it with its special tokens (T5: "▁Yes", "</s>"), teacher-forced through the decoder. This is
  what the published code (t2v_metrics) computes for CLIP-FlanT5 and InstructBLIP-FlanT5: the answer is passed as
  decoder labels and the score is exp(-mean cross-entropy), i.e. sqrt(P(▁Yes) * P(</s> | ▁Yes)).

The answer token is the first token of `answer` encoded without special tokens: with a SentencePiece vocabulary
(T5, Llama) "Yes" becomes "▁Yes" (the word at the start of a text, as the decoder's first token is), the token the
reference code scores.

options: path (local folder or hub id), device (cpu | cuda | cuda:N | auto), dtype (default float32),
batch_size (8), template (must contain {prompt}), answer ("Yes"), negative ("No"), normalize (vocab | yes_no |
sequence).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import hf_common as hf
from flowscale_ray.rewards.base import Reward
from flowscale_ray.rewards.clip import check_batch_size

DEFAULT_TEMPLATE = 'Does this figure show "{prompt}"? Please answer yes or no.'
NORMALIZE = ("vocab", "yes_no", "sequence")


def check_template(template: Any) -> str:
    if not isinstance(template, str) or "{prompt}" not in template:
        raise ValueError(f"reward.template: expected a string containing {{prompt}}, got {template!r}")
    try:
        template.format(prompt="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"reward.template: {template!r} has a placeholder other than {{prompt}} ({exc!r}); write a literal "
            "brace as {{ or }}"
        ) from None
    return template


def first_token(tokenizer: Any, word: Any, field: str) -> int:
    if not isinstance(word, str) or not word.strip():
        raise ValueError(f"reward.{field}: expected a non-empty string, got {word!r}")
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"reward.{field}: the model's tokenizer turns {word!r} into no tokens")
    return int(ids[0])


def decoder_start_token(model: Any, source: str) -> int:
    """The token an encoder-decoder language model's decoder starts from (T5: the pad token, 0)."""
    text_config = getattr(model.config, "text_config", None)
    for where in (text_config, model.config, getattr(model, "generation_config", None)):
        start = getattr(where, "decoder_start_token_id", None)
        if isinstance(start, int):
            break
    else:
        raise ValueError(
            f"reward.path: {source!r} holds an encoder-decoder language model ({type(model).__name__}) whose config "
            "names no decoder_start_token_id; add it to the text config"
        )
    if "decoder_input_ids" not in inspect.signature(model.forward).parameters:
        raise ValueError(
            f"reward.path: {source!r} holds an encoder-decoder model ({type(model).__name__}) whose forward takes "
            "no decoder_input_ids; vqa_score supports BLIP-2 / InstructBLIP-style encoder-decoder models"
        )
    return start


class VQAScore(Reward):
    name = "vqa_score"

    def __init__(
        self,
        path: str,
        device: str = "auto",
        dtype: str | None = None,
        batch_size: int = 8,
        template: str = DEFAULT_TEMPLATE,
        answer: str = "Yes",
        negative: str = "No",
        normalize: str = "vocab",
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.batch_size = check_batch_size(batch_size)
        self.template = check_template(template)
        if normalize not in NORMALIZE:
            raise ValueError(f"reward.normalize: expected one of {', '.join(NORMALIZE)}, got {normalize!r}")
        self.normalize = normalize
        self.device, self.dtype = hf.device_and_dtype(device, dtype)
        what = "a vision-language model (AutoModelForImageTextToText) with its processor"
        source = hf.check_folder(path, what, ("processor_config.json | preprocessor_config.json",))
        model = hf.load(AutoModelForImageTextToText, source, what, dtype=self.dtype, use_safetensors=True)
        self.encoder_decoder = bool(
            getattr(model.config, "is_encoder_decoder", False)
            or not getattr(model.config, "use_decoder_only_language_model", True)
        )
        if self.encoder_decoder:
            self.decoder_start_id = decoder_start_token(model, source)
        elif normalize == "sequence":
            raise ValueError(
                f"reward.normalize: 'sequence' is for encoder-decoder models; {source!r} holds a decoder-only "
                f"one ({type(model).__name__}): use vocab or yes_no"
            )
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.processor = hf.load(AutoProcessor, source, what)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "right"  # the answer position is each row's last real token
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.answer_id = first_token(self.tokenizer, answer, "answer")
        self.negative_id = first_token(self.tokenizer, negative, "negative")
        if self.answer_id == self.negative_id:
            raise ValueError(f"reward.negative: {negative!r} starts with the same token as answer {answer!r}")
        # normalize=sequence: the whole answer as the reference passes it as decoder labels (T5 adds "</s>").
        self.answer_ids = [int(i) for i in self.tokenizer(answer)["input_ids"]]
        if self.encoder_decoder and self.answer_ids[:1] != [self.answer_id]:
            # BART-style decoders (Florence-2, ...) emit a start-of-text token before the answer's first word.
            first = self.tokenizer.convert_ids_to_tokens(self.answer_ids[:1])
            raise ValueError(
                f"reward.path: the tokenizer in {source!r} puts {first} before {answer!r}; vqa_score reads an "
                "encoder-decoder model's answer at the decoder's first position "
                "and supports T5-style decoders (InstructBLIP / BLIP-2 with Flan-T5), whose first token is the answer"
            )
        self.image_token = getattr(self.processor, "image_token", None)
        if getattr(self.processor, "chat_template", None) is None and not self.image_token:
            raise ValueError(
                f"reward.path: the processor in {source!r} has neither a chat template nor an image token; "
                "add its chat_template.jinja"
            )
        self._keep = not self.encoder_decoder and "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.image_prefix = "" if self._processor_adds_image_tokens() else f"{self.image_token}\n"

    def _processor_adds_image_tokens(self) -> bool:
        """Whether the processor puts the image placeholder tokens into the text itself (BLIP-like processors) or
        expects the text to carry one (LLaVA-like)."""
        if getattr(self.processor, "chat_template", None) is not None or not self.image_token:
            return True
        from PIL import Image

        token = str(getattr(self.image_token, "content", self.image_token))
        try:
            ids = self.processor(images=[Image.new("RGB", (32, 32))], text=["x"], return_tensors="pt")["input_ids"]
        except Exception:  # e.g. LLaVA: "the number of image tokens does not match the images"
            return False
        return bool((ids == self.tokenizer.convert_tokens_to_ids(token)).any())

    def question(self, prompt: Prompt | str) -> str:
        return self.template.format(prompt=prompt if isinstance(prompt, str) else prompt.text)

    def text(self, prompt: Prompt | str) -> str:
        """The model's whole text input for one prompt (the image placeholder included)."""
        question = self.question(prompt)
        if getattr(self.processor, "chat_template", None) is None:
            return f"{self.image_prefix}{question}"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return str(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))

    def decoder_input_ids(self, n: int) -> Tensor:
        """An encoder-decoder model's decoder input for `n` rows: the start token, then (normalize=sequence) the
        answer's tokens but the last, so that position j predicts answer token j (teacher forcing)."""
        ids = [self.decoder_start_id] + (self.answer_ids[:-1] if self.normalize == "sequence" else [])
        return torch.tensor([ids], dtype=torch.long).expand(n, -1)

    @torch.no_grad()
    def answer_log_probs(self, samples: Tensor, prompts: Sequence[Prompt | str]) -> Tensor:
        """log-softmax over the vocabulary at the answer position, [B, V] in float32 ([B, len(answer tokens), V]
        for normalize=sequence: one row per answer token). For an encoder-decoder model the answer position is
        the decoder's first output position."""
        inputs = self.processor(
            images=hf.pil_images(samples), text=[self.text(p) for p in prompts], padding=True, return_tensors="pt"
        )
        mask = inputs["attention_mask"]
        last = mask.sum(1) - 1
        if not bool((mask.bool() == (torch.arange(mask.shape[1])[None] < mask.sum(1, keepdim=True))).all()):
            raise RuntimeError("vqa_score: the processor did not right-pad the batch")
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
            if isinstance(v, Tensor)
        }
        rows = torch.arange(len(prompts))
        if self.encoder_decoder:
            decoder = self.decoder_input_ids(len(prompts)).to(self.device)
            logits = self.model(**inputs, decoder_input_ids=decoder).logits
            if self.normalize != "sequence":
                logits = logits[:, 0]
        elif self._keep:  # only the answer positions go through the LM head (a 150k vocabulary is large)
            keep = torch.unique(last)
            logits = self.model(**inputs, logits_to_keep=keep.to(self.device)).logits
            logits = logits[rows, torch.searchsorted(keep, last).to(logits.device)]
        else:
            logits = self.model(**inputs).logits[rows, last.to(self.device)]
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def __call__(self, samples: Tensor, prompts: Sequence[Prompt]) -> Tensor:
        if samples.shape[0] != len(prompts):
            raise ValueError(f"{samples.shape[0]} samples but {len(prompts)} prompts")
        out = []
        for start in range(0, samples.shape[0], self.batch_size):
            logp = self.answer_log_probs(
                samples[start : start + self.batch_size], prompts[start : start + self.batch_size]
            )
            if self.normalize == "vocab":
                out.append(logp[:, self.answer_id].exp())
            elif self.normalize == "sequence":  # exp(-mean cross-entropy) of the answer's tokens
                target = torch.tensor(self.answer_ids)
                out.append(logp[:, torch.arange(len(target)), target].mean(1).exp())
            else:
                pair = logp[:, [self.answer_id, self.negative_id]]
                out.append(torch.softmax(pair, dim=-1)[:, 0])
        return torch.cat(out).to(torch.float64) if out else torch.zeros(0, dtype=torch.float64)
