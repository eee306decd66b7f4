"""Prompt-to-Prompt attention processors on a tiny real UNet: p = 0 is no processor, p = 1 copies attention."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from ip2p.pairs.align import needleman_wunsch, refinement_mapper, replacement_mapper, word_token_spans
from ip2p.pairs.p2p import (
    AttentionRefine,
    AttentionReplace,
    PairAttentionState,
    PromptToPromptProcessor,
    SelfAttentionCopyProcessor,
    attention_processors,
    copy_pairs,
    p2p_active,
)


def _inputs(k: int = 1, seed: int = 0):
    """A (4K) batch: latents for {uncond, cond} x K candidates x 2 images, and distinct text embeddings."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(4 * k, 4, 16, 16, generator=g)  # (4K, 4, h, w)
    embeds = torch.randn(4 * k, 77, 32, generator=g)  # (4K, T, D)
    return latents, torch.tensor(500), embeds


@pytest.fixture
def unet(t2i):
    saved = dict(t2i.unet.attn_processors)
    yield t2i.unet
    t2i.unet.set_attn_processor(saved)


def _run(unet, make=None, k=1):
    latents, t, embeds = _inputs(k)
    with torch.no_grad():
        if make is None:
            return unet(latents, t, encoder_hidden_states=embeds).sample
        with attention_processors(unet, make):
            return unet(latents, t, encoder_hidden_states=embeds).sample


def test_the_copy_is_on_for_steps_below_p_times_n_minus_one():
    n = 100
    on = [bool(p2p_active(torch.tensor([0.5]), i, n)) for i in range(n)]
    assert on == [i < 0.5 * (n - 1) for i in range(n)] and sum(on) == 50
    assert not any(p2p_active(torch.tensor([0.0]), i, n) for i in range(n))
    assert [bool(p2p_active(torch.tensor([1.0]), i, n)) for i in range(n)] == [True] * (n - 1) + [False]
    assert copy_pairs(torch.arange(4.0), torch.tensor([True, False])).tolist() == [0.0, 0.0, 2.0, 3.0]


def test_p_zero_equals_diffusers_default_processor(unet):
    unet.set_attn_processor(AttnProcessor())
    reference = _run(unet)
    state = PairAttentionState(torch.tensor([0.0]), num_steps=10)
    for step in (0, 9):
        state.step = step
        out = _run(unet, lambda name, old: SelfAttentionCopyProcessor(state, old, name))
        assert torch.equal(out, reference)
    # The explicit-scores path (used with a recorder) is diffusers' AttnProcessor computation, bit for bit.
    out = _run(unet, lambda name, old: SelfAttentionCopyProcessor(state, old, name, recorder={}))
    assert torch.equal(out, reference)
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values()), "processors not restored"


def test_p_one_gives_image_1_the_self_attention_of_image_0_in_every_layer(unet):
    k = 2
    recorder: dict = {}
    state = PairAttentionState(torch.tensor([1.0, 0.0]), num_steps=10)  # candidate 0 copies, candidate 1 not
    _run(unet, lambda name, old: SelfAttentionCopyProcessor(state, old, name, recorder), k=k)
    self_layers = sorted(n.removesuffix(".processor") for n in unet.attn_processors if ".attn1." in n)
    assert sorted(n.removesuffix(".processor") for n in recorder) == self_layers and self_layers
    for probs in (calls[0] for calls in recorder.values()):
        grouped = probs.unflatten(0, (2, k, 2))  # (branch, candidate, image, heads, N, N)
        for branch in (0, 1):  # both guidance branches
            assert torch.equal(grouped[branch, 0, 0], grouped[branch, 0, 1])
            assert not torch.allclose(grouped[branch, 1, 0], grouped[branch, 1, 1])


def test_fused_copy_equals_the_explicit_score_copy(unet):
    state = PairAttentionState(torch.tensor([1.0]), num_steps=10)
    fused = _run(unet, lambda name, old: SelfAttentionCopyProcessor(state, old, name))
    explicit = _run(unet, lambda name, old: SelfAttentionCopyProcessor(state, old, name, recorder={}))
    torch.testing.assert_close(fused, explicit, rtol=1e-4, atol=1e-5)
    plain = _run(unet)
    assert not torch.allclose(fused[1], plain[1], atol=1e-4), "the copy changed nothing"
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-4, atol=1e-5)  # image 0 is not affected


def test_prompt_to_prompt_edits_cross_attention_in_the_conditional_branch_only(unet):
    recorder: dict = {}
    state = PairAttentionState(torch.tensor([1.0]), num_steps=10, cross_replace_steps=1.0)
    edits = {
        "replace": AttentionReplace(torch.eye(77)),
        "refine": AttentionRefine(torch.arange(77), torch.ones(77)),
    }
    for edit in edits.values():
        recorder.clear()
        _run(unet, lambda name, old, edit=edit: PromptToPromptProcessor(state, edit, old, name, recorder))
        assert any(".attn2." in n for n in recorder) and any(".attn1." in n for n in recorder)
        for probs in (calls[0] for calls in recorder.values()):
            grouped = probs.unflatten(0, (2, 1, 2))  # (branch, candidate, image, heads, N, M)
            assert torch.equal(
                grouped[1, 0, 0], grouped[1, 0, 1]
            )  # conditional: image 1 reads image 0's maps
            assert not torch.allclose(grouped[0, 0, 0], grouped[0, 0, 1])  # unconditional: untouched
    state.step = 9  # past int((N + 1) * 0.5) and int(N * 0.5): nothing is edited
    state.cross_replace_steps, state.p = 0.5, torch.tensor([0.5])
    assert torch.equal(
        _run(unet, lambda name, old: PromptToPromptProcessor(state, edits["replace"], old, name)), _run(unet)
    )


def test_replacement_mapper_swaps_word_spans(t2i):
    tok = t2i.tokenizer
    source, target = "a red circle", "a blue circle"
    s, t = word_token_spans(source, tok), word_token_spans(target, tok)
    assert [i for span in s for i in span] == list(range(1, len(tok(source).input_ids) - 1))
    m = replacement_mapper(source, target, tok)
    assert m[0, 0] == 1 and m[s[0][0], t[0][0]] == 1
    for i in s[1]:  # "red" (3 byte tokens) spreads evenly onto "blue" (4)
        assert m[i, t[1]].tolist() == [1 / len(t[1])] * len(t[1])
    for i, j in zip(s[2], t[2], strict=True):  # "circle", shifted by one token
        assert m[i, j] == 1
    eos_s, eos_t = s[2][-1] + 1, t[2][-1] + 1
    assert m[eos_s, eos_t] == 1
    assert m.sum(1)[: eos_s + 1].tolist() == [1.0] * (eos_s + 1)  # every source token's attention is kept
    with pytest.raises(ValueError, match="equal word counts"):
        replacement_mapper("a circle", "a big circle", tok)


def test_refinement_aligns_tokens_and_marks_new_ones(t2i):
    assert needleman_wunsch([0, 5, 9], [0, 7, 5, 9]) == [0, -1, 1, 2]
    tok = t2i.tokenizer
    mapper, alphas = refinement_mapper("a circle", "a big circle", tok)
    s, t = word_token_spans("a circle", tok), word_token_spans("a big circle", tok)
    assert alphas[t[1]].tolist() == [0.0] * len(t[1])  # "big" is new: keeps its own attention
    assert mapper[t[2]].tolist() == s[1] and mapper[t[0]].tolist() == s[0]
    assert alphas[: t[1][0]].tolist() == [1.0] * t[1][0]
