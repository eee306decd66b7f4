"""The ``hf`` backend: any transformers causal language model writes triplets (paper section 3.1.1).

Sampling reproduces the original GPT-3 call (temperature 0.7, top_p 1, frequency penalty 0.1, at most 256 new tokens,
stop at ``"\\nEND"``) with transformers' ``generate``, batched with left padding. Two pieces are ours:

- :class:`FrequencyPenaltyLogitsProcessor`: OpenAI's frequency/presence penalties, which transformers lacks (its
  ``repetition_penalty`` is multiplicative and counts the prompt).
- :class:`SplitTemperatureLogitsWarper`: one temperature for the instruction and another (``caption_temperature``,
  0 for greedy) for the edited caption after ``"\n%%\n"``, per row.
- :class:`PerRowSampler`: draws each row's token from that row's own ``torch.Generator``, seeded per caption, so a
  caption's sample does not depend on which other captions share its batch (a resumed run draws the same).

Models are loaded with ``trust_remote_code`` left off: only architectures that transformers itself implements run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from ip2p.devices import pick_device, pick_dtype
from ip2p.registry import LANGUAGE_MODELS
from ip2p.text.backends import Completion, SamplingConfig
from ip2p.text.format import DELIMITER_1, STOP, make_prompt


class TextModelError(ValueError):
    """A language model or tokenizer could not be loaded; the message names the path and the fix."""


# -- sampling pieces ----------------------------------------------------------------------------------------
def frequency_penalty(
    scores: torch.Tensor, generated: torch.Tensor, frequency: float, presence: float = 0.0
) -> torch.Tensor:
    """OpenAI's penalties: ``mu[j] - c[j] * frequency - (c[j] > 0) * presence``.

    ``c[j]`` counts how often token ``j`` was already generated in this completion (the prompt does not count), as
    the OpenAI API reference defines ``frequency_penalty`` and ``presence_penalty``.

    Args:
        scores: (B, V) next-token logits.
        generated: (B, T) token ids generated so far (T may be 0).
    """
    counts = torch.zeros_like(scores)  # (B, V)
    if generated.shape[1]:
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
    return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)


class FrequencyPenaltyLogitsProcessor(LogitsProcessor):
    """:func:`frequency_penalty` as a transformers logits processor; tokens before ``prompt_length`` are the prompt."""

    def __init__(self, prompt_length: int, frequency: float = 0.1, presence: float = 0.0) -> None:
        self.prompt_length = prompt_length
        self.frequency = frequency
        self.presence = presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.frequency and not self.presence:
            return scores
        return frequency_penalty(scores, input_ids[:, self.prompt_length :], self.frequency, self.presence)


def tails_contain(
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    prompt_length: int,
    text: str,
    window: int = 8,
) -> list[bool]:
    """Per row: whether the last ``window`` generated tokens (never the prompt's) decode to a string containing
    ``text``. A string the sampler has just completed appears there first, so only those tokens are decoded."""
    tails = input_ids[:, max(prompt_length, input_ids.shape[1] - window) :]
    return [text in t for t in tokenizer.batch_decode(tails, skip_special_tokens=True)]


class SplitTemperatureLogitsWarper(LogitsProcessor):
    """Temperature ``instruction`` until a row has generated ``separator`` (``"\\n%%\\n"``), ``caption`` after it;
    a temperature of 0 keeps only the row's most likely token (greedy).

    A triplet's diversity is in its instruction; its edited caption is a function of the caption and the
    instruction, which a small model copies more faithfully without sampling noise (the toy language model:
    ``ip2p toy lm-validity --caption-temperature``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_length: int,
        instruction: float,
        caption: float,
        separator: str = DELIMITER_1,
        window: int = 8,
    ) -> None:
        if instruction <= 0 or caption < 0:
            raise ValueError(f"temperatures must be > 0 and >= 0, got {instruction} and {caption}")
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.instruction = instruction
        self.caption = caption
        self.separator = separator
        self.window = window
        self.in_caption: torch.Tensor | None = None  # (B,) bool, once true stays true

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.in_caption is None:
            self.in_caption = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
        todo = (~self.in_caption).nonzero().flatten()
        if len(todo) and input_ids.shape[1] > self.prompt_length:
            found = tails_contain(
                self.tokenizer, input_ids[todo], self.prompt_length, self.separator, self.window
            )
            self.in_caption[todo] = torch.tensor(found, device=scores.device)
        out = scores / self.instruction
        rows = self.in_caption
        if rows.any():
            if self.caption > 0:
                out[rows] = scores[rows] / self.caption
            else:
                best = scores[rows].argmax(dim=-1, keepdim=True)
                greedy = torch.full_like(scores[rows], float("-inf")).scatter(1, best, 0.0)
                out[rows] = greedy
        return out


class PerRowSampler(LogitsProcessor):
    """Samples one token per row from ``softmax(scores)`` with that row's generator; returns logits that are -inf
    everywhere but the drawn token, so greedy decoding (``do_sample=False``) emits it. Must be the last processor."""

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float(), dim=-1)  # (B, V)
        picks = [torch.multinomial(p, 1, generator=g) for p, g in zip(probs, self.generators, strict=True)]
        chosen = torch.cat(picks)  # (B,)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen), device=scores.device), chosen] = 0.0
        return out


class StopOnText(StoppingCriteria):
    """Per-row stop once the generated text contains ``stop`` (the paper's ``"\\nEND"``)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, prompt_length: int, stop: str = STOP, window: int = 8
    ):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop = stop
        self.window = window

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        found = tails_contain(self.tokenizer, input_ids, self.prompt_length, self.stop, self.window)
        return torch.tensor(found, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stop: str = STOP) -> str:
    """The completion up to (not including) the stop sequence, as OpenAI returns it."""
    return text[: text.index(stop)] if stop in text else text


# -- loading ------------------------------------------------------------------------------------------------
def load_causal_lm(
    path: str | Path, device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a folder, a hub id or a name of ``ip2p.registry.LANGUAGE_MODELS``
    (``toy``: the toy world's bundled language model); a LoRA adapter folder is merged into its base.

    ``trust_remote_code`` is never passed: architectures outside transformers are refused.
    """
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    path = str(path)
    named = LANGUAGE_MODELS.find(path)
    if named is not None:
        name, path = path, str(named() if callable(named) else named)
        if not (Path(path) / "config.json").is_file():
            raise TextModelError(
                f"the bundled {name} language model is not installed at {path}; pass --model PATH"
            )
    adapter = Path(path) / "adapter_config.json"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if adapter.is_file():
            from peft import PeftModel

            base = json.loads(adapter.read_text())["base_model_name_or_path"]
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except ImportError as exc:
        raise TextModelError(f"{path}: is a LoRA adapter; install peft (pip install 'ip2p[text]')") from exc
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TextModelError(
            f"cannot load a causal language model from {path!r} ({first}); give a folder saved by "
            "`ip2p finetune-text` or save_pretrained, or a hub id while online"
        ) from exc
    prepare_tokenizer(tokenizer)
    return model.to(dev).eval(), tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding for batched generation, and a pad token (the EOS token where the model has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TextModelError("the tokenizer has neither a pad nor an EOS token; add one before training")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -- the backend --------------------------------------------------------------------------------------------
class HFGenerator:
    """Batched sampling of completions from a transformers causal LM.

    Example:
        >>> gen = HFGenerator.from_pretrained("runs/toy-lm", device="cpu")  # doctest: +SKIP
        >>> gen.generate(["a red circle in the center on a white background"], seeds=[0])  # doctest: +SKIP
        ['make the circle blue\\n%%\\na blue circle in the center on a white background']
    """

    name = "hf"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig | None = None,
        batch_size: int = 16,
        model_name: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = prepare_tokenizer(tokenizer)
        self.sampling = sampling or SamplingConfig()
        self.sampling.validate()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.model_name = model_name or str(getattr(model.config, "_name_or_path", "") or "unnamed")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        sampling: SamplingConfig | None = None,
        batch_size: int = 16,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
    ) -> HFGenerator:
        model, tokenizer = load_causal_lm(path, device, dtype)
        return cls(model, tokenizer, sampling, batch_size, model_name=str(path))

    def settings(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_name,
            "sampling": self.sampling.to_dict(),
            "batch_size": self.batch_size,
            "device": str(self.model.device),
            "dtype": str(self.model.dtype).removeprefix("torch."),
        }

    def generate(self, captions: Sequence[str], seeds: Sequence[int]) -> list[Completion]:
        if len(captions) != len(seeds):
            raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
        # Batch captions of similar length together (less padding); per-caption seeds keep the result the same.
        order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
        out: list[Completion] = [""] * len(captions)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            texts = self._generate_batch([captions[i] for i in chunk], [seeds[i] for i in chunk])
            for i, text in zip(chunk, texts, strict=True):
                out[i] = text
        return out

    @torch.no_grad()
    def _generate_batch(self, captions: list[str], seeds: list[int]) -> list[str]:
        s = self.sampling
        tok = self.tokenizer
        enc = tok(
            [make_prompt(c) for c in captions], return_tensors="pt", padding=True, return_token_type_ids=False
        ).to(self.model.device)
        prompt_length = enc["input_ids"].shape[1]  # (B, P), left padded
        processors = LogitsProcessorList(
            [FrequencyPenaltyLogitsProcessor(prompt_length, s.frequency_penalty, s.presence_penalty)]
        )
        if s.caption_temperature is None or s.caption_temperature == s.temperature:
            processors.append(TemperatureLogitsWarper(s.temperature))
        else:
            processors.append(
                SplitTemperatureLogitsWarper(tok, prompt_length, s.temperature, s.caption_temperature)
            )
        if s.top_p < 1.0:
            processors.append(TopPLogitsWarper(s.top_p))
        processors.append(PerRowSampler(seeds, self.model.device))
        config = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            do_sample=False,  # PerRowSampler has already drawn the token; greedy emits it
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        ids = self.model.generate(
            **enc,
            generation_config=config,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([StopOnText(tok, prompt_length)]),
        )  # (B, P + T)
        texts = tok.batch_decode(ids[:, prompt_length:], skip_special_tokens=True)
        return [cut_at_stop(t) for t in texts]
