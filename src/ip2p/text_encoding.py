"""Prompts to the text encoder's hidden states: the conditioning of every UNet call (paper sections 3.1.2, 3.2).

Stable Diffusion conditions on the last hidden states of CLIP's text encoder over prompts tokenized to the
tokenizer's full length (77 for CLIP): padded to it and truncated at it, as diffusers' pipelines and the original
repository do. Editing, pair generation and training all go through ``encode_prompts`` so that they condition the
UNet on exactly the same tensors. SDXL editors condition on two text encoders instead (``encode_prompts_sdxl``).
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


def encode_prompts_sdxl(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[torch.nn.Module],
    prompts: Sequence[str],
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    *,
    lock: contextlib.AbstractContextManager | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) prompts -> SDXL's conditioning: (B, T, D1 + D2) hidden states and (B, P) pooled text embeddings.

    SDXL conditions on the *penultimate* hidden states of both text encoders, concatenated along the features,
    and on the projected pooled output of the second (a ``CLIPTextModelWithProjection``), as diffusers'
    ``StableDiffusionXLPipeline.encode_prompt`` does.

    Args:
        tokenizers: the two CLIP tokenizers (each pads to and truncates at its own ``model_max_length``).
        text_encoders: ``CLIPTextModel`` and ``CLIPTextModelWithProjection``, in that order.
        prompts: the texts, one per batch row.
        device: where the text encoders run.
        dtype: the returned dtype (default: the second text encoder's, as diffusers).
        lock: held while tokenizing (see :func:`encode_prompts`).

    Example:
        >>> hidden, pooled = encode_prompts_sdxl(
        ...     [c.tokenizer, c.tokenizer_2], [c.text_encoder, c.text_encoder_2], ["make it red"], "cpu"
        ... )
        >>> hidden.shape, pooled.shape  # (1, 77, 2048), (1, 1280) for SDXL
    """
    if len(tokenizers) != 2 or len(text_encoders) != 2:
        raise ValueError(
            f"SDXL needs two tokenizers and two text encoders, got {len(tokenizers)} and {len(text_encoders)}"
        )
    with lock if lock is not None else contextlib.nullcontext():
        ids = [tokenize_prompts(tokenizer, prompts) for tokenizer in tokenizers]  # 2 x (B, T)
    hidden = []
    for token_ids, encoder in zip(ids, text_encoders, strict=True):
        out = encoder(token_ids.to(device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # (B, T, D_i): the penultimate layer
    pooled = out[0]  # (B, P): the second encoder's projected pooled output
    if pooled.ndim != 2:
        raise ValueError(
            "the second SDXL text encoder must return pooled embeddings (CLIPTextModelWithProjection)"
        )
    dtype = text_encoders[1].dtype if dtype is None else dtype
    return torch.cat(hidden, dim=-1).to(dtype), pooled.to(dtype)  # (B, T, D1 + D2), (B, P)
