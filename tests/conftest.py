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
