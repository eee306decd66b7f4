"""Fixtures of the pair-generation tests: a tiny text-to-image model, a tiny CLIP (vision tower on 32 px), triplets."""

from __future__ import annotations

import json

import pytest
import torch


def build_tiny_clip(seed: int = 0):
    """A CLIPModel built from configs, with the offline byte-level tokenizer; returns (model, tokenizer)."""
    from transformers import CLIPConfig, CLIPModel

    from ip2p.tokenization import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(model_max_length=77)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval(), tokenizer


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """The tiny CLIP saved as a folder (what --clip PATH takes)."""
    model, tokenizer = build_tiny_clip()
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def t2i():
    """Tiny text-to-image components (4-channel UNet on 16 x 16 latents, VAE factor 2: 32 px images)."""
    from ip2p.tiny import tiny_components

    return tiny_components(edit=False)


@pytest.fixture(scope="session")
def triplets_file(tmp_path_factory):
    rows = [
        {
            "input": "a red circle on the left",
            "edit": "make the circle blue",
            "output": "a blue circle on the left",
        },
        {
            "caption": "two green squares",
            "edit": "add a triangle",
            "output": "two green squares and a triangle",
        },
        {"input": "a small star", "edit": "make it big", "output": "a big star"},
        {"input": "a cat at night", "edit": "make it day", "output": "a cat at day"},
    ]
    path = tmp_path_factory.mktemp("triplets") / "triplets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
