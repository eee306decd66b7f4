"""Fixtures of the pair-generation tests: a tiny text-to-image model and triplets (the tiny CLIP is in tests/conftest.py)."""

from __future__ import annotations

import json

import pytest


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
