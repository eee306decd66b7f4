"""CLIP tokenizers built offline: a byte-level vocabulary, optionally with BPE merges learnt from a corpus.

Stable Diffusion's text encoder reads CLIP's BPE tokens. Our tiny and toy models need a tokenizer of the same class
(so diffusers' pipelines and ours treat them exactly like SD's), but no vocabulary can be downloaded here. Every
byte has a symbol of its own, so any text can be tokenized; merges learnt from a domain's corpus make its words
single tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_clip_tokenizer(
    corpus: Iterable[str] = (), vocab_size: int = 2048, model_max_length: int = 77
) -> CLIPTokenizer:
    """A CLIPTokenizer over bytes, plus BPE merges learnt from ``corpus`` (lines of text) when given.

    Args:
        corpus: texts whose frequent words should become single tokens (empty: a pure byte-level tokenizer).
        vocab_size: upper bound on the vocabulary (bytes, their end-of-word variants and merges).
        model_max_length: token sequences are padded or truncated to this length, as CLIP's 77.
    """
    byte_symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for sym in byte_symbols + [s + "</w>" for s in byte_symbols]:
        vocab[sym] = len(vocab)
    merges: list[tuple[str, str]] = []
    texts = [t for t in corpus]
    if texts:
        merges = _learn_merges(texts, vocab_size - len(vocab) - 2)
        for a, b in merges:
            vocab.setdefault(a + b, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )


def _learn_merges(texts: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE over the corpus' words (CLIP's lower-cased, whitespace-split words, with ``</w>`` at the end)."""
    from collections import Counter

    table = _bytes_to_unicode()
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for word in text.lower().replace(",", " , ").replace(":", " : ").replace(".", " . ").split():
            symbols = [table[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            words[tuple(symbols)] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(max(num_merges, 0)):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


# What a fast tokenizer keeps of its last call's padding and truncation, which `save_pretrained` would write into
# tokenizer.json and the next load would read back as defaults (the ids of an unpadded call are unchanged).
_CALL_STATE = (
    "max_length",
    "pad_to_multiple_of",
    "pad_token_type_id",
    "stride",
    "truncation_side",
    "truncation_strategy",
)


def without_call_state(tokenizer):
    """A copy of ``tokenizer`` to save: no padding or truncation left over from its calls, as it was built."""
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    for key in _CALL_STATE:
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer
