"""Token alignment between a caption and its edited caption, for Prompt-to-Prompt's cross-attention edits.

Prompt-to-Prompt (Hertz et al. 2022; PAPER.md section 8, ``seq_aligner.py``) moves the source prompt's
cross-attention maps onto the target prompt's tokens. Two mappings:

- *replacement* (AttentionReplace): both captions have the same number of words; the words that differ are
  swapped token span for token span, the others map to themselves. A (L, L) matrix ``M[source, target]``.
- *refinement* (AttentionRefine): the target adds or changes words; a global (Needleman-Wunsch) alignment of the
  token ids says which target token reads which source token, and new tokens keep their own attention.

Our code; the scoring (gap 0, match 1, mismatch -1) and tie-breaking follow the original so that the alignments
agree.
"""

from __future__ import annotations

import torch


def word_token_spans(text: str, tokenizer) -> list[list[int]]:
    """Token positions of each space-separated word of ``text`` in its encoding (position 0 is BOS).

    CLIP's tokenizer splits on whitespace before BPE, so a word's tokens are the same alone or in the sentence.

    Example:
        >>> word_token_spans("a red cat", tokenizer)  # doctest: +SKIP
        [[1], [2], [3]]
    """
    spans, position = [], 1
    for word in text.split(" "):
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        spans.append(list(range(position, position + n)))
        position += n
    return spans


def replacement_mapper(source: str, target: str, tokenizer, max_len: int = 77) -> torch.Tensor:
    """(max_len, max_len) matrix M with ``target_attention = source_attention @ M`` (AttentionReplace).

    Words that differ map their source token span onto the target span: one to one when the spans have the same
    length, else every source token spreads 1/len(target span) onto each target token (as the original). All other
    tokens, BOS, EOS and padding included, map position to position after the shift that longer or shorter spans
    cause. (The original maps the tokens after the last replaced word j -> j rather than i -> j, which differs
    only when the replaced words' token counts differ; we keep the aligned mapping.)

    Raises:
        ValueError: when the captions' word counts differ (use the refinement mapping then).
    """
    words_s, words_t = source.split(" "), target.split(" ")
    if len(words_s) != len(words_t):
        raise ValueError(
            f"AttentionReplace needs captions with equal word counts, got {len(words_s)} and {len(words_t)} "
            f"({source!r} -> {target!r}); use the refine mode for such pairs"
        )
    spans_s, spans_t = word_token_spans(source, tokenizer), word_token_spans(target, tokenizer)
    mapper = torch.zeros(max_len, max_len)
    mapper[0, 0] = 1.0  # BOS
    i = j = 1
    for ws, wt, span_s, span_t in zip(words_s, words_t, spans_s, spans_t, strict=True):
        if ws != wt:
            src = [k for k in span_s if k < max_len]
            tgt = [k for k in span_t if k < max_len]
            if len(src) == len(tgt):
                mapper[src, tgt] = 1.0
            else:
                for k in tgt:
                    mapper[src, k] = 1.0 / len(tgt)
        else:
            for a, b in zip(span_s, span_t, strict=True):
                if a < max_len and b < max_len:
                    mapper[a, b] = 1.0
        i, j = i + len(span_s), j + len(span_t)
    while i < max_len and j < max_len:  # EOS and padding
        mapper[i, j] = 1.0
        i, j = i + 1, j + 1
    return mapper


def needleman_wunsch(
    x: list[int], y: list[int], match: int = 1, mismatch: int = -1, gap: int = 0
) -> list[int]:
    """Global alignment of two token sequences: for each position of ``y``, the aligned position of ``x`` or -1.

    Scores and tie-breaking as Prompt-to-Prompt's ``seq_aligner.global_align``: a cell takes "left" (a new token
    of y) on ties, then "up" (a dropped token of x), then "diagonal" (aligned).

    Example:
        >>> needleman_wunsch([0, 5, 9], [0, 7, 5, 9])
        [0, -1, 1, 2]
    """
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    trace = [[0] * (m + 1) for _ in range(n + 1)]  # 1 left, 2 up, 3 diagonal
    for j in range(1, m + 1):
        score[0][j], trace[0][j] = j * gap, 1
    for i in range(1, n + 1):
        score[i][0], trace[i][0] = i * gap, 2
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left = score[i][j - 1] + gap
            up = score[i - 1][j] + gap
            diag = score[i - 1][j - 1] + (match if x[i - 1] == y[j - 1] else mismatch)
            best = max(left, up, diag)
            score[i][j] = best
            trace[i][j] = 1 if best == left else 2 if best == up else 3
    aligned = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        move = trace[i][j]
        if move == 3:
            i, j = i - 1, j - 1
            aligned[j] = i
        elif move == 1:
            j -= 1
        else:
            i -= 1
    return aligned


def refinement_mapper(
    source: str, target: str, tokenizer, max_len: int = 77
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper (max_len,) long, alphas (max_len,) float) for AttentionRefine.

    Target token j reads source token ``mapper[j]`` where ``alphas[j] == 1``; where 0 (a token new in the target) it
    keeps its own attention. Positions past the target's EOS map to themselves, as the original.
    """
    x = tokenizer(source, truncation=True, max_length=max_len).input_ids
    y = tokenizer(target, truncation=True, max_length=max_len).input_ids
    aligned = torch.tensor(needleman_wunsch(x, y), dtype=torch.long)
    mapper = torch.arange(max_len)
    alphas = torch.ones(max_len)
    mapper[: len(y)] = aligned.clamp(min=0)
    alphas[: len(y)] = (aligned >= 0).float()
    return mapper, alphas
