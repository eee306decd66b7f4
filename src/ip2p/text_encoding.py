"""Prompts to the text encoder's hidden states: the conditioning of every UNet call (paper sections 3.1.2, 3.2).

Stable Diffusion conditions on the last hidden states of CLIP's text encoder over prompts tokenized to the
tokenizer's full length (77 for CLIP): padded to it and truncated at it, as diffusers' pipelines and the original
repository do. Editing, pair generation and training all go through ``encode_prompts`` so that they condition the
UNet on exactly the same tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch


def tokenize_prompts(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """(B,) prompts -> (B, T) token ids, padded to and truncated at ``tokenizer.model_max_length`` (T)."""
    if isinstance(prompts, str):
        raise TypeError(f"prompts must be a list of strings, got the string {prompts[:40]!r}")
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_prompts(
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    prompts: Sequence[str],
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    *,
    lock: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """(B,) prompts -> (B, T, D) last hidden states of ``text_encoder``.

    Gradients follow the caller's mode: wrap the call in ``torch.no_grad()``/``torch.inference_mode()`` where the
    text encoder is frozen.

    Args:
        tokenizer: a CLIP tokenizer; prompts are padded to and truncated at its ``model_max_length``.
        text_encoder: a CLIP text model; its first output (the last hidden state) is returned.
        prompts: the texts, one per batch row; ``""`` is the null prompt of classifier-free guidance.
        device: where the text encoder runs.
        dtype: the returned dtype (default: the text encoder's own).
        lock: held while tokenizing, for callers that share a tokenizer between threads (fast tokenizers are not
            thread-safe).

    Example:
        >>> emb = encode_prompts(components.tokenizer, components.text_encoder, ["make it red", ""], "cpu")
        >>> emb.shape  # (2, 77, 768) for Stable Diffusion 1.5
    """
    with lock if lock is not None else contextlib.nullcontext():
        ids = tokenize_prompts(tokenizer, prompts)  # (B, T)
    hidden = text_encoder(ids.to(device))[0]  # (B, T, D)
    return hidden if dtype is None else hidden.to(dtype)
