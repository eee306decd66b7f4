"""CLIP scores on closed-form embeddings, the filter and top-k, and the scorer on a tiny CLIPModel."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from ip2p.pairs.clip_score import (
    ClipScorer,
    ClipScores,
    ClipThresholds,
    clip_similarities,
    directional_similarity,
    passes_clip_filter,
    select_top_k,
)


def test_similarities_in_closed_form():
    e = torch.eye(4)
    image_0, image_1 = e[:1], (e[:1] + e[1:2]) / math.sqrt(2)  # image 1 turned 45 degrees towards caption 1
    s = clip_similarities(image_0, image_1, e[:1], e[1:2])
    assert float(s.clip_sim_0) == pytest.approx(1.0)
    assert float(s.clip_sim_1) == pytest.approx(1 / math.sqrt(2))
    assert float(s.clip_sim_image) == pytest.approx(1 / math.sqrt(2))
    assert float(s.clip_sim_dir) == pytest.approx(math.cos(math.pi / 8))  # the chord's angle to e1 - e0
    scaled = clip_similarities(3 * image_0, 2 * image_1, 5 * e[:1], e[1:2])  # features are normalised first
    for name in ("clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image"):
        torch.testing.assert_close(getattr(scaled, name), getattr(s, name))
    # Moving against the caption change gives -1; no caption change gives 0.
    assert float(directional_similarity(e[:1], e[1:2], e[1:2], e[:1])) == pytest.approx(-1.0)
    assert float(directional_similarity(e[:1], e[1:2], e[2:3], e[2:3])) == 0.0


def _scores(**values):
    base = dict(clip_sim_0=[0.3], clip_sim_1=[0.3], clip_sim_dir=[0.3], clip_sim_image=[0.8])
    return ClipScores(**{k: torch.tensor(values.get(k, v)) for k, v in base.items()})


def test_filter_needs_all_four_thresholds():
    assert passes_clip_filter(_scores()).tolist() == [True]
    assert passes_clip_filter(
        _scores(clip_sim_0=[0.2], clip_sim_dir=[0.2], clip_sim_image=[0.75])
    ).tolist() == [True]
    for name, low in [
        ("clip_sim_0", 0.19),
        ("clip_sim_1", 0.19),
        ("clip_sim_dir", 0.19),
        ("clip_sim_image", 0.74),
    ]:
        assert passes_clip_filter(_scores(**{name: [low]})).tolist() == [False], name
    # The original code's image-image threshold (0.7) keeps what the paper's (0.75) drops.
    assert passes_clip_filter(_scores(clip_sim_image=[0.72]), ClipThresholds(image_image=0.7)).tolist() == [
        True
    ]
    assert ClipThresholds() == ClipThresholds(0.2, 0.2, 0.75)


def test_top_k_by_directional_similarity_ties_to_the_larger_seed():
    directional = [0.5, 0.9, 0.7, 0.9, 0.1]
    passed = [True, False, True, True, True]
    seeds = [10, 11, 12, 3, 14]
    assert select_top_k(directional, passed, seeds, 2) == [3, 2]
    assert select_top_k([0.4, 0.4], [True, True], [1, 2], 1) == [1]
    assert select_top_k(directional, [False] * 5, seeds, 4) == []
    assert select_top_k(directional, passed, seeds, 10) == [3, 2, 0, 4]


def test_scorer_on_a_tiny_clip(tiny_clip_dir, tmp_path):
    scorer = ClipScorer.from_pretrained(tiny_clip_dir)
    assert scorer.size == 32
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 48, 48, generator=g)  # resized to the vision tower's 32 px
    features = scorer.encode_images(images)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))
    s = scorer(images, images, ["a red circle"] * 2, ["a blue circle"] * 2)
    torch.testing.assert_close(s.clip_sim_image, torch.ones(2))  # same images
    assert s.clip_sim_dir.abs().max() < 1e-4  # no image change
    s = scorer(images[:1], images[1:], ["a red circle"], ["a red circle"])
    assert abs(float(s.clip_sim_dir)) < 1e-4  # no caption change
    # The model's own normalisation is read from its preprocessor config.
    other = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, other)
    (other / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    assert ClipScorer.from_pretrained(other).mean.flatten().tolist() == [0.5] * 3


def test_unknown_clip_is_a_one_line_error(tmp_path):
    from ip2p.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="could not load the CLIP model"):
        ClipScorer.from_pretrained(tmp_path / "none")
