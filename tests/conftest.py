"""Shared fixtures: tiny real components built from configs (no hub, no downloads), and an offline hub."""

from __future__ import annotations

import os

import pytest
import torch

# Tiny models gain nothing from threads, and threads thrash when a background job shares the 2 cores.
torch.set_num_threads(1)

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def make_components():
    """Factory: ``make_components(edit=True, seed=0)`` -> fresh tiny EditComponents built from configs."""
    from ip2p.tiny import tiny_components

    def factory(edit: bool = True, seed: int = 0):
        return tiny_components(edit=edit, seed=seed)

    return factory


@pytest.fixture
def tiny_model_dir(tmp_path_factory, make_components):
    """A tiny editing model saved in diffusers format (shared by the tests of one module)."""
    from ip2p.models import save_edit_model

    folder = tmp_path_factory.mktemp("models") / "tiny-edit"
    save_edit_model(make_components(), folder)
    return folder


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
