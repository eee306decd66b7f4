"""The end-of-run report of pair generation: acceptance, cost per accepted pair, score histograms.

Counts come from the per-shard statistics, scores from the per-shard score logs, so the report covers every
shard done so far, whichever process or job did it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ip2p.imaging import save_figure

SCORE_NAMES = ("clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image")
COUNTS = (
    "triplets",
    "candidates",
    "passed",
    "pairs",
    "triplets_with_pairs",
    "unet_calls",
    "unet_evaluations",
)


def summarize(shard_stats: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Totals and rates over shards' statistics.

    ``candidate_acceptance``: candidates passing the CLIP filter / candidates; ``triplet_acceptance``: triplets
    with at least one kept pair / triplets; ``unet_evaluations_per_pair``: UNet evaluations (one latent row of
    one guidance branch for one step; a candidate costs 4 per step) / kept pairs.
    """
    shard_stats = list(shard_stats)
    total: dict[str, Any] = {name: sum(int(s.get(name, 0)) for s in shard_stats) for name in COUNTS}
    total["failed"] = sum(len(s.get("failures", [])) for s in shard_stats)
    total["seconds"] = round(sum(float(s.get("seconds", 0.0)) for s in shard_stats), 3)
    total["shards"] = len(shard_stats)
    total["candidate_acceptance"] = total["passed"] / total["candidates"] if total["candidates"] else None
    total["triplet_acceptance"] = (
        total["triplets_with_pairs"] / total["triplets"] if total["triplets"] else None
    )
    total["unet_evaluations_per_pair"] = (
        total["unet_evaluations"] / total["pairs"] if total["pairs"] else None
    )
    return total


def read_scores(files: Iterable[Path]) -> list[dict[str, Any]]:
    """Every candidate's score record from the per-shard JSONL logs."""
    rows = []
    for path in sorted(files):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def plot_histograms(rows: list[dict[str, Any]], thresholds: dict[str, float], path: Path) -> Path:
    """A PNG with one histogram per score (all candidates, and those kept), with the threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, name in zip(axes, SCORE_NAMES, strict=True):
        values = [r[name] for r in rows]
        kept = [r[name] for r in rows if r.get("kept")]
        # One set of bins for both histograms, spanning the scores and the threshold.
        low, high = min([*values, thresholds.get(name, 1.0)]), max([*values, thresholds.get(name, -1.0)])
        bins = [low + (high - low) * i / 40 for i in range(41)] if high > low else 40
        ax.hist(values, bins=bins, color="#8aa", label=f"candidates ({len(values)})")
        if kept:
            ax.hist(kept, bins=bins, color="#c52", alpha=0.8, label=f"kept ({len(kept)})")
        if name in thresholds:
            ax.axvline(thresholds[name], color="black", linestyle="--", linewidth=1, label="threshold")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=90)
    finally:
        plt.close(fig)


def format_summary(totals: dict[str, Any]) -> str:
    """One line for the terminal."""

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    per_pair = totals["unet_evaluations_per_pair"]
    return (
        f"{totals['pairs']} pairs from {totals['triplets']} triplets "
        f"({pct(totals['triplet_acceptance'])} of triplets, {pct(totals['candidate_acceptance'])} of "
        f"{totals['candidates']} candidates passed the CLIP filter); "
        f"{'n/a' if per_pair is None else f'{per_pair:.0f}'} UNet evaluations per pair; "
        f"{totals['failed']} failed"
    )
