"""Stage 2 of dataset synthesis (paper section 3.1.2): paired images for caption pairs, CLIP-filtered.

- :mod:`.p2p`: Prompt-to-Prompt attention processors (the paper's self-attention copy; AttentionReplace/Refine);
- :mod:`.align`: token alignment for the cross-attention controls;
- :mod:`.sample`: paired sampling with shared noise, per-candidate draws;
- :mod:`.clip_score`: CLIP similarities, the filter, top-k selection;
- :mod:`.generate`: the sharded, resumable, distributed job and its config presets;
- :mod:`.original_format`: writer of the original repository's dataset folders;
- :mod:`.report`: acceptance, cost per pair, score histograms.
"""

from .clip_score import (
    ClipScorer,
    ClipScores,
    ClipThresholds,
    clip_similarities,
    directional_similarity,
    passes_clip_filter,
    select_top_k,
)
from .generate import PRESETS, PairsConfig, apply_preset, generate_pairs, read_triplets
from .p2p import (
    AttentionRefine,
    AttentionReplace,
    PairAttentionState,
    PromptToPromptProcessor,
    SelfAttentionCopyProcessor,
    attention_processors,
    p2p_active,
)
from .sample import CandidateDraw, PairBatch, PairSampler, candidate_seed, draw_candidate

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
