"""The toy world's language model: a small causal LM trained from scratch on the toy seed triplets (3.1.1, toy).

It plays GPT-3's part for the toy world: ``ip2p finetune-text --preset toy`` trains it through the same fine-tuning
path as a real model, and ``ip2p gen-text --model runs/toy-lm`` writes triplets with it. Because toy captions and
instructions have exact meanings, its output can be checked: a triplet is *valid* when the edited caption describes
exactly the scene that the instruction makes of the input caption's scene (:func:`lm_validity`, or
``ip2p toy lm-validity MODEL``, measures the share on held-out captions).

GPT-3 came to its 700 examples knowing English; a model trained from scratch on 700 strings memorises them (3% valid
triplets on held-out captions after 25 epochs). The toy preset therefore re-phrases each seed triplet every epoch
(:func:`paraphrase`: the same scenes and edits, other wording), which makes copying the caption the cheapest way to
fit the data.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported where a model is built: reading toy captions stays light
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from ip2p.toy.scene import Scene

from ip2p.text.format import DELIMITER_0, DELIMITER_1, STOP, Triplet

EOS = "<|endoftext|>"


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer whose merges make every toy word (with or without a leading space) and every
    delimiter one token. Learnt from the vocabulary alone, offline; any other text still encodes, byte by byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ip2p.toy.captions import VOCABULARY

    words = [w for w in VOCABULARY if w.isalpha()]
    corpus = [*words, *(" " + w for w in words), ",", ":", DELIMITER_0, DELIMITER_1, STOP, "."]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,  # an upper bound: training stops once every corpus word is a single token
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def build_toy_model(
    vocab_size: int, eos_token_id: int, seed: int = 0, layers: int = 4, width: int = 128
) -> LlamaForCausalLM:
    """A randomly initialised Llama-architecture causal LM; with the defaults about 0.9 M parameters.

    Llama rather than GPT-2 for its rotary position embeddings: an edited caption is mostly a copy of the input
    caption, and copying is a relative-position skill that rotary embeddings make easy to learn from 700 examples.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=3 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,  # prompt (< 64 tokens) + up to 256 new tokens
        tie_word_embeddings=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def triplet_is_valid(triplet: Triplet) -> bool:
    """True when the instruction, applied to the input caption's scene, gives the edited caption's scene."""
    from ip2p.toy.captions import parse_caption
    from ip2p.toy.edits import apply_instruction

    try:
        return apply_instruction(parse_caption(triplet.input), triplet.edit) == parse_caption(triplet.output)
    except ValueError:
        return False


def heldout_toy_captions(n: int, seed: int = 1, exclude: Iterable[str] = ()) -> list[str]:
    """``n`` distinct toy captions drawn like the seed triplets' inputs, none of them in ``exclude``.

    With the defaults they are held out from ``seed_triplets(700, seed=0)``, the toy LM's training set.
    """
    from ip2p.toy.seeds import seed_triplets

    banned = set(exclude) or {t["input"] for t in seed_triplets(700, seed=0)}
    out: list[str] = []
    seen: set[str] = set()
    rng = random.Random(seed)
    while len(out) < n:
        for t in seed_triplets(max(64, n), seed=rng.randrange(1 << 30)):
            c = t["input"]
            if c not in banned and c not in seen:
                seen.add(c)
                out.append(c)
                if len(out) == n:
                    break
    return out


class _FirstTryRecorder:
    """Wraps a backend and keeps each caption's first completion (before any filter or retry)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.name, self.model = backend.name, backend.model
        self.first: dict[str, object] = {}

    def settings(self) -> dict:
        return self.backend.settings()

    def generate(self, captions, seeds):
        out = self.backend.generate(captions, seeds)
        for caption, completion in zip(captions, out, strict=True):
            self.first.setdefault(caption, completion)
        return out


def measure_validity(
    backend, captions: list[str], output: str | Path, seed: int = 0
) -> dict[str, float | int]:
    """The share of valid triplets a backend writes for toy captions, before and after stage 1's filters.

    ``valid_raw``: first tries (unparsable ones count as invalid) over all captions; ``valid_filtered``: triplets
    kept by :func:`ip2p.text.generate.generate_triplets` (paper retries and filters) over the kept ones;
    ``yield``: kept over captions. ``by_type``: for each edit type the instructions ask for (as the toy grammar
    reads them; ``unreadable`` otherwise), its share of the kept triplets and the share of those that are valid; a
    sampler can trade the mix for validity (a lower temperature asks for the easy global edits more often).
    """
    from ip2p.text.format import parse_completion
    from ip2p.text.generate import GenerateConfig, generate_triplets
    from ip2p.toy.edits import edit_type_of
    from ip2p.toy.seeds import read_jsonl

    recorder = _FirstTryRecorder(backend)
    config = GenerateConfig(output=str(output), seed=seed, overwrite=True)
    report = generate_triplets(captions, recorder, config, progress=False)
    raw_valid = 0
    for caption in captions:
        parsed = (
            parse_completion(recorder.first.get(caption, ""))
            if isinstance(recorder.first.get(caption), str)
            else None
        )
        raw_valid += parsed is not None and triplet_is_valid(Triplet(caption, *parsed))
    kept = [Triplet.from_dict(row) for row in read_jsonl(output)]
    verdicts = [triplet_is_valid(t) for t in kept]
    kept_valid = sum(verdicts)
    counts: dict[str, list[int]] = {}
    for triplet, valid in zip(kept, verdicts, strict=True):
        try:
            kind = edit_type_of(triplet.edit)
        except ValueError:
            kind = "unreadable"
        counts.setdefault(kind, [0, 0])
        counts[kind][0] += 1
        counts[kind][1] += valid
    by_type = {kind: {"share": n / len(kept), "valid": v / n} for kind, (n, v) in sorted(counts.items())}
    return {
        "captions": len(captions),
        "valid_raw": raw_valid / max(len(captions), 1),
        "kept": len(kept),
        "valid_filtered": kept_valid / max(len(kept), 1),
        "yield": len(kept) / max(len(captions), 1),
        "by_type": by_type,
        "rejected_attempts": dict(report.rejected_attempts),
        "seconds": report.seconds,
    }


def rephrase_instruction(instruction: str, scene: Scene, rng: random.Random) -> str:
    """The same edit of ``scene`` in other words: another template, referring expression or phrasing."""
    from ip2p.toy.captions import background_word, random_plan, shape_phrase
    from ip2p.toy.edits import STYLE_TEMPLATES, TEMPLATES, parse_instruction, referring_expression

    p = parse_instruction(instruction)
    if p.type == "style":
        return rng.choice(STYLE_TEMPLATES[p.value])
    if p.type == "background":
        return rng.choice(TEMPLATES["background"]).format(bg=background_word(p.value, random_plan(rng)))
    if p.type == "add":
        return rng.choice(TEMPLATES["add"]).format(shape=shape_phrase(p.shape, random_plan(rng)))
    matches = [
        s
        for s in scene.shapes
        if s.kind == p.kind
        and p.color in (None, s.color)
        and p.size in (None, s.size)
        and p.position in (None, s.position)
    ]
    if len(matches) != 1:
        raise ValueError(f"{instruction!r} does not pick one shape of the scene")
    ref = referring_expression(scene, matches[0], rng)
    return rng.choice(TEMPLATES[p.type]).format(ref=ref, color=p.value, kind=p.value)


def paraphrase(triplet: Triplet, rng: random.Random) -> Triplet:
    """The same edit of the same scene in other words: both captions re-phrased by one random phrasing plan, and
    the instruction by another template and referring expression.

    Used by the toy preset to augment the 700 seed triplets: the scenes and edits stay those of the seed set, but
    the wording varies from epoch to epoch, so that a small model learns to copy the input caption's wording into
    the edited caption, and to refer to the shapes it sees, instead of memorising 700 strings. Triplets that do
    not parse are returned unchanged.
    """
    from ip2p.toy.captions import caption_with_plan, parse_caption, random_plan

    try:
        before, after = parse_caption(triplet.input), parse_caption(triplet.output)
        edit = rephrase_instruction(triplet.edit, before, rng)
    except ValueError:
        return triplet
    plan = random_plan(rng)
    return Triplet(caption_with_plan(before, plan), edit, caption_with_plan(after, plan))


def relabel(triplet: Triplet, rng: random.Random) -> Triplet:
    """The same edit with the world's symbols renamed, and re-phrased (see :func:`paraphrase`).

    One random bijection per attribute (kinds, colours, sizes, grid cells, backgrounds, styles) is applied to both
    scenes and to the instruction, which is then written anew (referring expressions are chosen for the renamed
    scene). Edits commute with such renamings, so a valid triplet stays valid. GPT-3 knew that "red" and "blue", or
    "top left" and "bottom", are interchangeable in a sentence; a model trained from scratch on 700 triplets does
    not, and learns to copy attribute words it has seen together in the seeds instead (the toy-relabel preset of
    :mod:`ip2p.text.finetune`: valid triplets on held-out captions 58.9% -> 70.8%). Triplets that do not parse are
    returned unchanged.
    """
    from dataclasses import replace

    from ip2p.toy.captions import background_word, caption_with_plan, parse_caption, random_plan, shape_phrase
    from ip2p.toy.edits import (
        STYLE_TEMPLATES,
        TEMPLATES,
        parse_instruction,
        referring_expression,
        resolve_shape,
    )
    from ip2p.toy.scene import BACKGROUNDS, COLORS, KINDS, POSITIONS, SIZES, STYLES

    try:
        before, after = parse_caption(triplet.input), parse_caption(triplet.output)
        p = parse_instruction(triplet.edit)
        target = (
            None
            if p.type in ("style", "background", "add")
            else resolve_shape(before, p.kind, p.color, p.size, p.position)
        )
    except ValueError:
        return triplet

    def bijection(symbols) -> dict[str, str]:
        symbols = list(symbols)
        return dict(zip(symbols, rng.sample(symbols, len(symbols)), strict=True))

    kind, color, size = bijection(KINDS), bijection(COLORS), bijection(SIZES)
    cell, background, style = bijection(POSITIONS), bijection(BACKGROUNDS), bijection(STYLES)

    def shape(s):
        return replace(
            s, kind=kind[s.kind], color=color[s.color], size=size[s.size], position=cell[s.position]
        )

    def scene(s):
        return replace(
            s, shapes=tuple(map(shape, s.shapes)), background=background[s.background], style=style[s.style]
        )

    new_before, new_after = scene(before), scene(after)
    plan = random_plan(rng)
    if p.type == "style":
        edit = rng.choice(STYLE_TEMPLATES[style[p.value]])
    elif p.type == "background":
        edit = rng.choice(TEMPLATES["background"]).format(
            bg=background_word(background[p.value], random_plan(rng))
        )
    elif p.type == "add":
        edit = rng.choice(TEMPLATES["add"]).format(shape=shape_phrase(shape(p.shape), random_plan(rng)))
    else:
        ref = referring_expression(new_before, shape(target), rng)
        value = color[p.value] if p.type == "recolor" else kind[p.value] if p.type == "change_kind" else None
        edit = rng.choice(TEMPLATES[p.type]).format(ref=ref, color=value, kind=value)
    return Triplet(caption_with_plan(new_before, plan), edit, caption_with_plan(new_after, plan))


def lm_validity(
    model: str | Path,
    n: int = 300,
    seed: int = 0,
    output: str | Path | None = None,
    device: str = "auto",
    temperature: float = 0.7,
    caption_temperature: float | None = None,
) -> dict:
    """A toy LM's validity (:func:`measure_validity`) on ``n`` toy captions held out from the seeds it was trained on.

    Args:
        model: a folder saved by ``ip2p finetune-text --preset toy``.
        n: held-out captions.
        seed: the sampling seed.
        output: where to write the triplets (default: ``MODEL/eval.jsonl``).
        device: cpu, cuda or auto.
        temperature: the sampling temperature (the paper's 0.7).
        caption_temperature: the edited caption's temperature, after the instruction; 0: greedy (default:
            ``temperature``).

    Example:
        >>> lm_validity("runs/toy-lm", n=50)["valid_filtered"]  # doctest: +SKIP
        0.79
    """
    import json

    from ip2p.text.backends import SamplingConfig
    from ip2p.text.hf import HFGenerator
    from ip2p.text.sources import read_seed_triplets

    sampling = SamplingConfig(temperature=temperature, caption_temperature=caption_temperature)
    sampling.validate()
    generator = HFGenerator.from_pretrained(str(model), sampling=sampling, batch_size=32, device=device)
    folder = Path(model)
    saved = folder / "finetune_config.json"
    seeds = json.loads(saved.read_text()).get("seeds") or "toy" if saved.is_file() else "toy"
    trained_on = {t.input for t in read_seed_triplets(seeds)}  # held out from what this model saw
    result = measure_validity(
        generator, heldout_toy_captions(n, exclude=trained_on), output or folder / "eval.jsonl", seed=seed
    )
    result["trained_on"] = seeds
    return result


def build_for_finetune(config) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """``finetune-text --model toy``: the toy tokenizer and a fresh toy LM shaped by ``config.toy_layers`` and
    ``config.toy_width``, initialised from ``config.seed`` (the registry's language-model builder)."""
    tokenizer = build_toy_tokenizer()
    model = build_toy_model(
        len(tokenizer),
        tokenizer.eos_token_id,
        seed=config.seed,
        layers=config.toy_layers,
        width=config.toy_width,
    )
    return model, tokenizer
