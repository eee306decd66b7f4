import threading

import pytest
import torch
from diffusers import StableDiffusionPipeline

from ip2p.models import build_pipeline
from ip2p.text_encoding import encode_prompts, tokenize_prompts
from ip2p.tiny import tiny_components

PROMPTS = ["make the circle blue", "", "a photograph of an astronaut riding a horse"]


@pytest.fixture(scope="module")
def components():
    return tiny_components(edit=False)


@torch.no_grad()
def test_equals_diffusers_encode_prompt(components):
    """The conditioning diffusers' own pipeline computes, to the bit."""
    pipe = build_pipeline(StableDiffusionPipeline, components)
    reference, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, do_classifier_free_guidance=False)
    ours = encode_prompts(components.tokenizer, components.text_encoder, PROMPTS, "cpu")
    assert ours.shape == (3, 77, components.text_encoder.config.hidden_size)
    assert torch.equal(ours, reference)


def test_pads_and_truncates_to_the_tokenizer_length(components):
    tok = components.tokenizer
    long = " ".join(["red circle"] * 60)
    ids = tokenize_prompts(tok, ["", long, long + " and a blue square"])
    assert ids.shape == (3, tok.model_max_length)
    assert ids[0, 0] == tok.bos_token_id and ids[0, 1] == tok.eos_token_id  # "" is BOS, EOS, then padding
    assert ids[1, -1] == tok.eos_token_id  # truncated, still ended by EOS
    assert torch.equal(ids[1], ids[2])  # nothing past the limit reaches the encoder
    with torch.no_grad():
        emb = encode_prompts(tok, components.text_encoder, [long, long + " and a blue square"], "cpu")
    assert torch.equal(emb[0], emb[1])


def test_dtype_and_gradients_follow_the_caller(components):
    with torch.no_grad():
        half = encode_prompts(
            components.tokenizer, components.text_encoder, PROMPTS[:1], "cpu", torch.bfloat16
        )
        full = encode_prompts(components.tokenizer, components.text_encoder, PROMPTS[:1], "cpu")
    assert half.dtype == torch.bfloat16 and full.dtype == components.text_encoder.dtype
    assert torch.equal(half, full.to(torch.bfloat16))
    assert not full.requires_grad
    assert encode_prompts(components.tokenizer, components.text_encoder, PROMPTS[:1], "cpu").requires_grad


def test_lock_is_held_while_tokenizing(components):
    seen = []

    class Lock:
        def __init__(self):
            self.inner = threading.Lock()

        def __enter__(self):
            self.inner.acquire()
            seen.append("enter")

        def __exit__(self, *exc):
            seen.append("exit")
            self.inner.release()

    with torch.no_grad():
        encode_prompts(components.tokenizer, components.text_encoder, ["x"], "cpu", lock=Lock())
    assert seen == ["enter", "exit"]


def test_a_string_is_refused(components):
    with pytest.raises(TypeError, match="list of strings"):
        tokenize_prompts(components.tokenizer, "make it red")
