"""Settings of ``ip2p gen-pairs`` (paper section 3.1.2) and its presets, without torch: ``ip2p gen-pairs --help``
builds its flags from :class:`PairsConfig` (``ip2p.pairs.generate`` re-exports everything here).

Example::

    config = apply_preset("toy", {"triplets": "triplets.jsonl", "output": "data/toy-pairs"})
    config.validate()
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ip2p.flags import option

if TYPE_CHECKING:
    from ip2p.pairs.clip_score import ClipThresholds

DEFAULT_CLIP = (
    "openai/clip-vit-large-patch14"  # the original's ViT-L/14 (equal to ip2p.pairs.clip_score's, tested)
)

FORMATS = ("parquet", "original")


@dataclass
class PairsConfig:
    """Settings of ``ip2p gen-pairs``. Defaults are the paper's (original ``generate_img_dataset.py``)."""

    triplets: str = option(
        "JSONL of {input (or caption), edit, output} lines (stage 1's output)",
        default="",
        positional=True,
        required=True,
    )
    output: str = option(
        "output folder (rerun the same command to resume)",
        default="data/pairs",
        aliases=("-o",),
        required=True,
    )
    model: str = option(
        "text-to-image model: diffusers folder, hub id, .safetensors/.ckpt, 'toy' or 'tiny'",
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
    )
    clip: str = option("CLIP model scoring the pairs: folder, hub id or 'toy'", default=DEFAULT_CLIP)
    resolution: int = option("image side in pixels", default=512)
    num_candidates: int = option("candidate pairs per triplet before the CLIP filter", default=100)
    steps: int = option("sampler steps", default=100)
    batch_size: int = option(
        "candidates per UNet call; each takes 4 rows: 2 images x 2 guidance branches", default=4
    )
    min_p2p: float = option(
        "lower bound of the Prompt-to-Prompt fraction p, drawn per candidate", default=0.1
    )
    max_p2p: float = option("upper bound of p", default=0.9)
    min_cfg: float = option("lower bound of the guidance scale, drawn per candidate", default=7.5)
    max_cfg: float = option("upper bound of the guidance scale", default=15.0)
    clip_threshold: float = option("minimum image-caption CLIP similarity, both images", default=0.2)
    clip_dir_threshold: float = option("minimum directional CLIP similarity", default=0.2)
    clip_img_threshold: float = option(
        "minimum image-image CLIP similarity (the original code used 0.7)", default=0.75
    )
    top_k: int = option(
        "pairs kept per triplet, best directional similarity first (the original kept up to 4)", default=1
    )
    mode: str = option(
        "attention control: 'self' (the paper's self-attention copy), or Prompt-to-Prompt's "
        "'replace' (word swap, equal word counts) or 'refine' (added words)",
        default="self",
    )
    cross_replace_steps: float = option(
        "replace/refine: fraction of the steps with the cross-attention edit "
        "(Prompt-to-Prompt notebooks: 0.8)",
        default=0.8,
    )
    max_self_tokens: int = option(
        "replace/refine: largest self-attention layer injected, in queries (P2P: 256)", default=256
    )
    scheduler: str = option("sampler (the paper's: euler_ancestral)", default="euler_ancestral")
    timestep_spacing: str = option(
        "diffusers timestep spacing; linspace = the original's t = linspace(999, 0, N)", default="linspace"
    )
    seed: int = option(
        "run seed: every candidate's seed derives from it and the triplet's position", default=0
    )
    shard_size: int = option("triplets per output shard (the unit of resumption)", default=64)
    format: str = option(
        "output format: parquet (the official schema) or original (the original's folders)", default="parquet"
    )
    limit: int | None = option("use only the first N triplets", default=None)
    shard: int = option(
        "job-array index: this job does the output shards s with s % num_shards == shard", default=0
    )
    num_shards: int = option("job-array size", default=1)
    log_scores: bool = option("log every candidate's CLIP scores to scores/*.jsonl", default=True)
    report: bool = option(
        "write report/ (acceptance, cost per pair, score histograms) at the end", default=True
    )
    device: str = option(
        "cpu, cuda, cuda:1, mps or auto (auto: accelerate's device for this process)", default="auto"
    )
    dtype: str = option("auto (fp16 on GPU, fp32 on CPU), fp32, fp16 or bf16", default="auto")

    def thresholds(self) -> ClipThresholds:
        from ip2p.pairs.clip_score import ClipThresholds

        return ClipThresholds(self.clip_threshold, self.clip_dir_threshold, self.clip_img_threshold)

    def validate(self) -> None:
        from ip2p.pairs.sample import MODES
        from ip2p.sampling import SCHEDULERS

        for name in (
            "num_candidates",
            "steps",
            "batch_size",
            "top_k",
            "shard_size",
            "num_shards",
            "resolution",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.min_p2p <= self.max_p2p <= 1:
            raise ValueError(f"need 0 <= min_p2p <= max_p2p <= 1, got {self.min_p2p}, {self.max_p2p}")
        if self.min_cfg > self.max_cfg:
            raise ValueError(f"need min_cfg <= max_cfg, got {self.min_cfg}, {self.max_cfg}")
        for name in ("clip_threshold", "clip_dir_threshold", "clip_img_threshold"):
            if not -1 <= getattr(self, name) <= 1:
                raise ValueError(
                    f"{name} is a cosine similarity threshold in [-1, 1], got {getattr(self, name)}"
                )
        if not 0 <= self.cross_replace_steps <= 1:
            raise ValueError(f"cross_replace_steps must lie in [0, 1], got {self.cross_replace_steps}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if not 0 <= self.shard < self.num_shards:
            raise ValueError(f"shard {self.shard} of {self.num_shards}: need 0 <= shard < num_shards")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        if not self.triplets:
            raise ValueError("no triplets: pass a JSONL file of {input, edit, output} lines")
        if not Path(self.triplets).is_file():
            raise ValueError(f"{self.triplets}: no such file")


# The toy world at 64 px: fewer candidates and steps, all candidates of a triplet in one UNet call. On the
# 2-core CPU a triplet costs about 4 s with 4 candidates (4 x 2 images x 2 guidance branches x 20 steps).
# Guidance drawn from U(2, 4) rather than the paper's U(7.5, 15): the toy base draws its captions best at low
# guidance, and on 384 triplets (toy-fast) the kept pairs are 87.5% faithful at 2-4 against 38.5% at 7.5-15, with
# 78% of triplets kept instead of 51% (docs/results.md, "The pair guidance range").
_TOY: dict[str, Any] = dict(
    model="toy",
    clip="toy",
    resolution=64,
    num_candidates=4,
    steps=20,
    batch_size=4,
    shard_size=16,
    min_cfg=2.0,
    max_cfg=4.0,
)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # 512 px, 100 candidates x 100 steps, thresholds 0.2 / 0.2 / 0.75, SD 1.5, CLIP ViT-L/14
    "toy": _TOY,
    # The toy world on the 2-core CPU's budget: 2 candidates, 10 DPM-Solver++ steps (a quarter of the UNet
    # evaluations of "toy"), for more pairs at some cost in faithfulness (docs/results.md, "`toy-fast` against
    # `toy`").
    "toy-fast": {**_TOY, "num_candidates": 2, "steps": 10, "scheduler": "dpmpp_2m", "batch_size": 2},
}


def config_fields():
    return fields(PairsConfig)


def apply_preset(name: str, overrides: dict[str, Any] | None = None) -> PairsConfig:
    """The preset's config with ``overrides`` (fields given explicitly) on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PairsConfig(**{**PRESETS[name], **(overrides or {})})
