"""Prompt-to-Prompt attention control as diffusers attention processors (paper section 3.1.2; PAPER.md 3.4, 8).

Two images are generated side by side, one per caption; while a control is on, image 1 takes attention from
image 0 so that both share their layout.

- ``SelfAttentionCopyProcessor``: the paper's variant. In every self-attention layer (``attn1``) and in both
  guidance branches, image 1's pre-softmax self-attention scores are replaced by image 0's during the first
  fraction p of the steps (original ``ldm/modules/attention.py``; the flag is on for steps i < p (N - 1)).
- ``PromptToPromptProcessor``: the original Prompt-to-Prompt controls (Hertz et al. 2022), AttentionReplace and
  AttentionRefine: the conditional branch's post-softmax cross-attention maps of image 0 are moved onto image 1's
  tokens for the first ``cross_replace_steps`` of the steps, with self-attention injection (post-softmax, layers of
  at most 16 x 16 tokens at SD's 512 px) for the first p of the steps.

Nothing in the UNet is patched: ``attention_processors(unet, make)`` installs processors through diffusers'
``set_attn_processor`` and restores the previous ones on exit.

Batch layout shared by every processor here and by ``ip2p.pairs.sample``: the UNet batch is
(guidance branch, candidate, image) flattened, B = 2 x K x 2, row ``(branch * K + k) * 2 + image`` with branch 0 the
unconditional one. Rows (2j, 2j+1) are a pair; the conditional branch is the second half. With K = 1 this is the
original's ``[uncond 0, uncond 1, cond 0, cond 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

# Probabilities recorded per layer name, for inspection and tests: name -> [(B, heads, N, M) per call].
Recorder = dict[str, list[torch.Tensor]]


# -- when a control is on (pure) -----------------------------------------------------------------------------
def p2p_active(p: torch.Tensor, step: int, num_steps: int) -> torch.Tensor:
    """(K,) bool: whether the paper's self-attention copy is on at ``step`` for candidates with fractions ``p``.

    The original's ``prompt2prompt_threshold > i / (len(sigmas) - 2)``, i.e. on for steps i < p (N - 1): p = 0 is
    never on, p = 1 on for all steps but the last.
    """
    position = step / (num_steps - 1) if num_steps > 1 else 0.0
    return p > position


def self_replace_active(fraction: torch.Tensor, step: int, num_steps: int) -> torch.Tensor:
    """(K,) bool: Prompt-to-Prompt's self-attention injection window, steps [0, int(N * fraction))."""
    return torch.tensor([step < int(num_steps * float(f)) for f in fraction], dtype=torch.bool)


def cross_replace_active(fraction: float, step: int, num_steps: int) -> bool:
    """Prompt-to-Prompt's cross-attention edit window: steps [0, int((N + 1) * fraction))."""
    return step < int((num_steps + 1) * fraction)


def copy_pairs(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows 2j+1 of ``x`` (B, ...) replaced by rows 2j where ``mask[j]`` ((B/2,) bool); other rows unchanged.

    Example:
        >>> copy_pairs(torch.arange(4.0), torch.tensor([True, False])).tolist()
        [0.0, 0.0, 2.0, 3.0]
    """
    if x.shape[0] != 2 * mask.shape[0]:
        raise ValueError(
            f"a batch of {x.shape[0]} rows holds {x.shape[0] // 2} pairs, got a mask of {mask.shape[0]}"
        )
    pairs = x.unflatten(0, (-1, 2))  # (B/2, 2, ...)
    first, second = pairs[:, 0], pairs[:, 1]
    keep = mask.to(x.device).view(-1, *([1] * (first.ndim - 1)))
    return torch.stack([first, torch.where(keep, first, second)], dim=1).flatten(0, 1)


# -- the attention computation, with hooks -------------------------------------------------------------------
def attend(
    attn: Attention,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temb: torch.Tensor | None = None,
    *,
    edit_scores: Callable[[torch.Tensor], torch.Tensor] | None = None,
    edit_probs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_probs: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """diffusers' ``AttnProcessor`` computation (explicit scores and softmax), with hooks on the (B, heads, N, M)
    pre-softmax scores and post-softmax probabilities. Without hooks it equals ``AttnProcessor`` exactly."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # (B, N, C)
    batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    query = attn.head_to_batch_dim(query)  # (B * heads, N, d)
    key = attn.head_to_batch_dim(key)  # (B * heads, M, d)
    value = attn.head_to_batch_dim(value)

    dtype = query.dtype  # as Attention.get_attention_scores
    if attn.upcast_attention:
        query, key = query.float(), key.float()
    if attention_mask is None:
        base = torch.empty(
            query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype, device=query.device
        )
        scores = torch.baddbmm(base, query, key.transpose(-1, -2), beta=0, alpha=attn.scale)
    else:
        scores = torch.baddbmm(attention_mask, query, key.transpose(-1, -2), beta=1, alpha=attn.scale)
    if attn.upcast_softmax:
        scores = scores.float()
    heads = attn.heads
    if edit_scores is not None:
        scores = edit_scores(scores.unflatten(0, (-1, heads))).flatten(0, 1)  # via (B, heads, N, M)
    probs = scores.softmax(dim=-1).to(dtype)  # (B * heads, N, M)
    if edit_probs is not None:
        probs = edit_probs(probs.unflatten(0, (-1, heads))).flatten(0, 1)
    if on_probs is not None:
        on_probs(probs.unflatten(0, (-1, heads)))
    hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, N, C)
    return _finish(attn, hidden_states, residual, input_ndim)


def attend_copying_pairs(attn: Attention, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Self-attention where image 1 of each masked pair uses image 0's scores, through fused attention.

    Image 1's scores q1 k1^T are replaced by q0 k0^T: the same as attending with image 0's queries and keys over
    image 1's own values, which ``scaled_dot_product_attention`` does without materialising the (N, N) scores
    (64^2 x 64^2 per head at 512 px). Equal to ``attend`` with the score copy up to rounding.
    """
    residual = hidden_states
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)  # (B, N, C)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    batch = hidden_states.shape[0]

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)  # (B, heads, N, d)

    query = copy_pairs(split(attn.to_q(hidden_states)), mask)
    key = copy_pairs(split(attn.to_k(hidden_states)), mask)
    value = split(attn.to_v(hidden_states))
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)  # (B, heads, N, d)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * out.shape[-1]).to(query.dtype)  # (B, N, C)
    return _finish(attn, out, residual, input_ndim)


def _finish(
    attn: Attention, hidden_states: torch.Tensor, residual: torch.Tensor, input_ndim: int
) -> torch.Tensor:
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, dropout
    if input_ndim == 4:
        batch, channel, height, width = residual.shape
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


# -- shared state ----------------------------------------------------------------------------------------------
@dataclass
class PairAttentionState:
    """What the processors of one UNet need to know about the current call; the pair sampler sets ``step``.

    Attributes:
        p: (K,) per-candidate fraction of the steps with self-attention control.
        num_steps: UNet evaluations in the run (the sampler's steps).
        step: index of the current evaluation.
        cross_replace_steps: Prompt-to-Prompt modes: fraction of the steps with the cross-attention edit.
    """

    p: torch.Tensor
    num_steps: int
    step: int = 0
    cross_replace_steps: float = 0.8

    @property
    def num_candidates(self) -> int:
        return int(self.p.shape[0])

    def copy_mask(self) -> torch.Tensor:
        """(2K,) bool over the batch's pairs: the paper's copy, on in both guidance branches."""
        return p2p_active(self.p, self.step, self.num_steps).repeat(2)

    def inject_mask(self) -> torch.Tensor:
        """(2K,) bool: Prompt-to-Prompt's self-attention injection, in the conditional branch only."""
        on = self_replace_active(self.p, self.step, self.num_steps)
        return torch.cat([torch.zeros_like(on), on])

    def cross_on(self) -> bool:
        return cross_replace_active(self.cross_replace_steps, self.step, self.num_steps)

    def check_batch(self, batch: int) -> None:
        if batch != 4 * self.num_candidates:
            raise ValueError(
                f"pair attention control expects a batch of 4 x {self.num_candidates} candidates "
                "({uncond, cond} x candidates x {image 0, image 1}), got " + str(batch)
            )


class _Processor:
    """Common parts: the state, the processor it falls back to, an optional recorder of probabilities."""

    def __init__(
        self, state: PairAttentionState, inner=None, name: str = "", recorder: Recorder | None = None
    ):
        self.state = state
        self.inner = inner if inner is not None else AttnProcessor2_0()
        self.name = name
        self.recorder = recorder

    def _record(self, probs: torch.Tensor) -> None:
        if self.recorder is not None:
            self.recorder.setdefault(self.name, []).append(probs.detach().float().cpu())


class SelfAttentionCopyProcessor(_Processor):
    """The paper's Prompt-to-Prompt variant: image 1's self-attention scores := image 0's (PAPER.md 3.4).

    Cross-attention layers and steps where no candidate's copy is on run the wrapped processor unchanged, so with
    p = 0 the UNet computes exactly what it computes without this processor. With a ``recorder`` the scores are
    computed explicitly and copied as the original does (pre-softmax) and the probabilities of every
    self-attention call are recorded; otherwise the copy runs through fused attention (``attend_copying_pairs``).

    Example:
        >>> state = PairAttentionState(p=torch.tensor([0.5]), num_steps=100)
        >>> with attention_processors(unet, lambda name, old: SelfAttentionCopyProcessor(state, old, name)):
        ...     eps = unet(latents_4, t, encoder_hidden_states=embeds_4).sample  # doctest: +SKIP
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ):
        if encoder_hidden_states is not None:  # cross-attention: the variant leaves it alone
            return self.inner(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        self.state.check_batch(hidden_states.shape[0])
        mask = self.state.copy_mask()
        if self.recorder is not None:
            return attend(
                attn,
                hidden_states,
                None,
                attention_mask,
                temb,
                edit_scores=lambda s: copy_pairs(s, mask),
                on_probs=self._record,
            )
        if not bool(mask.any()):
            return self.inner(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        if attention_mask is not None or attn.spatial_norm is not None:
            return attend(
                attn, hidden_states, None, attention_mask, temb, edit_scores=lambda s: copy_pairs(s, mask)
            )
        return attend_copying_pairs(attn, hidden_states, mask)


class CrossAttentionEdit:
    """How a Prompt-to-Prompt control turns image 0's cross-attention (K, heads, N, L) into image 1's."""

    def __call__(self, base: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class AttentionReplace(CrossAttentionEdit):
    """Word swap (equal word counts): ``own := base @ mapper`` over the token axis (``align.replacement_mapper``)."""

    mapper: torch.Tensor  # (L, L)

    def __call__(self, base, own):
        return torch.einsum("khpw,wn->khpn", base, self.mapper.to(base))


@dataclass
class AttentionRefine(CrossAttentionEdit):
    """Added or changed words: aligned tokens read image 0's maps, new ones keep their own
    (``align.refinement_mapper``)."""

    mapper: torch.Tensor  # (L,) long
    alphas: torch.Tensor = field(default_factory=lambda: torch.ones(77))  # (L,) 1 aligned, 0 new

    def __call__(self, base, own):
        alphas = self.alphas.to(base)
        return base[..., self.mapper.to(base.device)] * alphas + own * (1 - alphas)


class PromptToPromptProcessor(_Processor):
    """The original Prompt-to-Prompt controls (PAPER.md 8) in the conditional branch only.

    Cross-attention: while ``state.cross_on()``, image 1's probabilities become ``edit(image 0's, image 1's)``.
    Self-attention: while the candidate's injection window is on and the layer has at most ``max_self_tokens``
    queries (16 x 16 = 256: SD's two coarsest levels at 512 px, as the original), image 1's probabilities are
    image 0's.
    """

    def __init__(
        self,
        state: PairAttentionState,
        edit: CrossAttentionEdit,
        inner=None,
        name: str = "",
        recorder: Recorder | None = None,
        max_self_tokens: int = 256,
    ):
        super().__init__(state, inner, name, recorder)
        self.edit = edit
        self.max_self_tokens = max_self_tokens

    def __call__(
        self,
        attn: Attention,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ):
        self.state.check_batch(hidden_states.shape[0])
        if encoder_hidden_states is None:
            tokens = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states[0, 0].numel()
            mask = self.state.inject_mask()
            if tokens <= self.max_self_tokens and bool(mask.any()):
                return attend(
                    attn,
                    hidden_states,
                    None,
                    attention_mask,
                    temb,
                    edit_probs=lambda p: copy_pairs(p, mask),
                    on_probs=self._record,
                )
        elif self.state.cross_on():
            return attend(
                attn,
                hidden_states,
                encoder_hidden_states,
                attention_mask,
                temb,
                edit_probs=self._edit_cross,
                on_probs=self._record,
            )
        if self.recorder is not None:
            return attend(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, on_probs=self._record
            )
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

    def _edit_cross(self, probs: torch.Tensor) -> torch.Tensor:
        k = self.state.num_candidates
        grouped = probs.unflatten(0, (2, k, 2))  # (branch, K, image, heads, N, L)
        cond = grouped[1]
        edited = self.edit(cond[:, 0], cond[:, 1])  # (K, heads, N, L)
        cond = torch.stack([cond[:, 0], edited.to(probs.dtype)], dim=1)
        return torch.stack([grouped[0], cond]).flatten(0, 2)


# -- installing -------------------------------------------------------------------------------------------------
@contextmanager
def attention_processors(unet, make: Callable[[str, object], object]) -> Iterator[None]:
    """Install ``make(name, current_processor)`` on every attention layer of ``unet``; restore on exit.

    ``name`` is diffusers' key, e.g. ``"down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"``.
    """
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({name: make(name, proc) for name, proc in saved.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(dict(saved))
