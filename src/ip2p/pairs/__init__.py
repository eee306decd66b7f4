"""Stage 2 of dataset synthesis (paper section 3.1.2): paired images for caption pairs, CLIP-filtered.

- :mod:`.p2p`: Prompt-to-Prompt attention processors (the paper's self-attention copy; AttentionReplace/Refine);
- :mod:`.align`: token alignment for the cross-attention controls;
- :mod:`.sample`: paired sampling with shared noise, per-candidate draws;
- :mod:`.clip_score`: CLIP similarities, the filter, top-k selection;
- :mod:`.config`: the job's settings and presets (torch-free);
- :mod:`.generate`: the sharded, resumable, distributed job;
- :mod:`.original_format`: writer of the original repository's dataset folders;
- :mod:`.report`: acceptance, cost per pair, score histograms.
"""

import importlib

# Where each public name lives. Imported on first use, so that the torch-free config (``ip2p.pairs.config``)
# loads without torch for ``ip2p gen-pairs --help``.
_HOMES = {
    "ClipScorer": "clip_score",
    "ClipScores": "clip_score",
    "ClipThresholds": "clip_score",
    "clip_similarities": "clip_score",
    "directional_similarity": "clip_score",
    "passes_clip_filter": "clip_score",
    "select_top_k": "clip_score",
    "PRESETS": "config",
    "PairsConfig": "config",
    "apply_preset": "config",
    "generate_pairs": "generate",
    "read_triplets": "generate",
    "AttentionRefine": "p2p",
    "AttentionReplace": "p2p",
    "PairAttentionState": "p2p",
    "PromptToPromptProcessor": "p2p",
    "SelfAttentionCopyProcessor": "p2p",
    "attention_processors": "p2p",
    "p2p_active": "p2p",
    "CandidateDraw": "sample",
    "PairBatch": "sample",
    "PairSampler": "sample",
    "candidate_seed": "sample",
    "draw_candidate": "sample",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "AttentionRefine",
    "AttentionReplace",
    "CandidateDraw",
    "ClipScorer",
    "ClipScores",
    "ClipThresholds",
    "PairAttentionState",
    "PairBatch",
    "PairSampler",
    "PairsConfig",
    "PromptToPromptProcessor",
    "SelfAttentionCopyProcessor",
    "apply_preset",
    "attention_processors",
    "candidate_seed",
    "clip_similarities",
    "directional_similarity",
    "draw_candidate",
    "generate_pairs",
    "p2p_active",
    "passes_clip_filter",
    "read_triplets",
    "select_top_k",
]
