"""Stage 2 of dataset synthesis (paper section 3.1.2): triplets in, CLIP-filtered image pairs out.

As the original ``generate_img_dataset.py``: for each (caption, instruction, edited caption) triplet, N candidate
pairs are generated with the Prompt-to-Prompt variant (``ip2p.pairs.sample``), each from its own seed with random
p and guidance scale; each is scored with CLIP; those passing all thresholds are ranked by directional similarity
and the best ``top_k`` kept.

Ours on top:

- Sharded and resumable. Output shard s holds the triplets [s * shard_size, (s + 1) * shard_size) of the input;
  a shard is committed by writing its statistics file last (every file through a temporary name and a rename).
  Every candidate's seed derives from the run seed and the triplet's position, so a rerun of the same command
  after a kill (at any moment) redoes only the uncommitted shards and ends with exactly an uninterrupted run's
  files.
- Split without overlap over job-array jobs (``shard``/``num_shards``) and over the processes of
  ``accelerate launch`` (accelerate's ``PartialState``): worker w of W takes the shards s with s % W == w.
- Per-triplet failures (e.g. a word swap between captions of different lengths) are recorded, never fatal.

Layout of ``output``::

    config.json                  resolved settings; a resumed run must match them
    data/shard-00000.parquet     pairs in the official schema (+ item, rank, seed, p, scale, CLIP scores)
      or {i:07d}/ + seeds.json   with format "original" (ip2p.pairs.original_format)
    scores/shard-00000.jsonl     every candidate's scores (log_scores)
    stats/shard-00000.json       the shard's counts: its presence marks the shard done
    manifest.json                settings, input, shards done, totals
    report/report.json, report/scores.png
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ip2p.fileio import write_text_atomic
from ip2p.jsonl import iter_jsonl_objects
from ip2p.pairs.clip_score import (
    ClipScorer,
    Scorer,
    passes_clip_filter,
    select_top_k,
)
from ip2p.pairs.config import (  # noqa: F401 (the config lives torch-free; re-exported here)
    FORMATS,
    PRESETS,
    PairsConfig,
    apply_preset,
    config_fields,
)
from ip2p.pairs.report import format_summary, plot_histograms, read_scores, summarize
from ip2p.pairs.sample import PairSampler, candidate_seed, draw_candidate


# -- input --------------------------------------------------------------------------------------------------------
def read_triplets(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The triplets of a JSONL file, as records with ``input``, ``edit`` and ``output`` (``caption`` is accepted
    for ``input``: the original's generator writes it, the released files use ``input``; PAPER.md 11.1).

    Other keys are kept (they go to prompt.json in the original format). Blank lines are skipped; an item's key
    is its position among the records.
    """
    path = Path(path)
    records = []
    for n, row in iter_jsonl_objects(path):
        if "input" not in row and "caption" in row:
            row = {"input": row["caption"], **row}
        missing = [k for k in ("input", "edit", "output") if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(
                f"{path}:{n}: missing text field(s) {missing}; need input (or caption), edit, output"
            )
        records.append(row)
    if not records:
        raise ValueError(f"{path}: no triplets")
    return records


# -- one triplet ------------------------------------------------------------------------------------------------
@dataclass
class ItemResult:
    """A triplet's kept pairs (best first), every candidate's score record, and its cost."""

    kept: list[tuple[dict[str, Any], Image.Image, Image.Image]]
    scores: list[dict[str, Any]]
    passed: int
    unet_evaluations: int  # UNet rows of its own candidates (calls, shared by triplets, are counted apart)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB image, rounded."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, 3)
    return Image.fromarray(array)


def generate_items(
    sampler: PairSampler,
    scorer: Scorer,
    items: list[tuple[int, dict[str, Any]]],
    config: PairsConfig,
    counts: dict[str, int] | None = None,
) -> Iterator[tuple[int, ItemResult]]:
    """Every candidate of the (item, triplet)s, ``config.batch_size`` at a time; yields each item's result once its
    last candidate is scored (a running top k per item: images of at most k candidates per unfinished triplet,
    plus one batch, are held).

    In mode "self" a batch runs on across triplets (many small triplets fill a GPU); the other modes edit one
    caption pair's attention, so their batches stay within a triplet. Every candidate's seed depends on its item
    and index alone, so the results do not depend on the batching (up to floating-point summation order).
    ``counts["unet_calls"]`` accumulates the UNet calls (a shared call counted once).
    """
    shape = sampler.latent_shape(config.resolution)
    thresholds = config.thresholds()
    order = [(item, triplet, j) for item, triplet in items for j in range(config.num_candidates)]
    if config.mode == "self":
        chunks = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    else:
        chunks = [
            order[i : min(i + config.batch_size, i - j + config.num_candidates)]
            for i, (_, _, j) in enumerate(order)
            if j % config.batch_size == 0
        ]
    best: dict[int, list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]] = {}
    records: dict[int, list[dict[str, Any]]] = {}
    evaluations = dict.fromkeys((item for item, _ in items), 0)
    for chunk in chunks:
        draws = [
            draw_candidate(
                candidate_seed(config.seed, item, j),
                shape,
                (config.min_p2p, config.max_p2p),
                (config.min_cfg, config.max_cfg),
            )
            for item, _, j in chunk
        ]
        captions_0 = [t["input"] for _, t, _ in chunk]
        captions_1 = [t["output"] for _, t, _ in chunk]
        batch = sampler(
            captions_0,
            captions_1,
            draws,
            steps=config.steps,
            resolution=config.resolution,
            mode=config.mode,
            cross_replace_steps=config.cross_replace_steps,
            max_self_tokens=config.max_self_tokens,
        )
        scores = scorer(batch.images_0, batch.images_1, captions_0, captions_1)
        passed = passes_clip_filter(scores, thresholds).tolist()
        if counts is not None:
            counts["unet_calls"] = counts.get("unet_calls", 0) + batch.unet_calls
        for i, (item, _, j) in enumerate(chunk):
            meta = {
                "seed": batch.seeds[i],
                "p2p_threshold": batch.p[i],
                "cfg_scale": batch.guidance_scales[i],
                **scores.row(i),
            }
            evaluations[item] += batch.unet_calls * 4
            records.setdefault(item, []).append(
                {"item": item, "candidate": j, **meta, "passed": bool(passed[i]), "kept": False}
            )
            if passed[i]:
                best.setdefault(item, []).append((meta, batch.images_0[i], batch.images_1[i]))
        # Keep only each item's running top k (images of the others are dropped): same as ranking all at the end.
        for item in dict.fromkeys(item for item, _, _ in chunk):  # the chunk's triplets, in order
            kept = best.get(item, [])
            ranked = select_top_k(
                [m["clip_sim_dir"] for m, _, _ in kept],
                [True] * len(kept),
                [m["seed"] for m, _, _ in kept],
                config.top_k,
            )
            best[item] = [kept[i] for i in ranked]
        for item in dict.fromkeys(item for item, _, j in chunk if j == config.num_candidates - 1):
            kept = best.pop(item, [])
            kept_seeds = {m["seed"] for m, _, _ in kept}
            item_records = records.pop(item)
            for record in item_records:
                record["kept"] = record["seed"] in kept_seeds
            pil = [(meta, to_pil(a), to_pil(b)) for meta, a, b in kept]
            passed_total = sum(r["passed"] for r in item_records)
            yield item, ItemResult(pil, item_records, passed_total, evaluations.pop(item))


def _isolating_failures(
    sampler: PairSampler,
    scorer: Scorer,
    items: list[tuple[int, dict[str, Any]]],
    config: PairsConfig,
    counts: dict[str, int],
) -> Iterator[tuple[int, ItemResult | ValueError]]:
    """``generate_items`` over ``items``; after a ValueError, the items not yet done go one at a time, so that
    only the triplet that caused it fails (yielded as the error)."""
    done: set[int] = set()
    try:
        for item, result in generate_items(sampler, scorer, items, config, counts):
            done.add(item)
            yield item, result
    except ValueError as exc:
        if len(items) == 1:
            yield items[0][0], exc
            return
        for pair in items:
            if pair[0] not in done:
                yield from _isolating_failures(sampler, scorer, [pair], config, counts)


# -- the job -------------------------------------------------------------------------------------------------------
def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def _file_digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _identity(config: PairsConfig, digest: str, num_items: int) -> dict[str, Any]:
    """What decides the output's content; a resumed run must agree on all of it."""
    ignore = {"triplets", "output", "shard", "num_shards", "log_scores", "report", "device", "dtype", "limit"}
    out = {k: v for k, v in asdict(config).items() if k not in ignore}
    return {**out, "triplets_sha256": digest, "num_items": num_items}


def _check_same_run(path: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume an output made with other settings (once it holds a committed shard)."""
    if not path.is_file() or not any((path.parent / "stats").glob("shard-*.json")):
        return
    previous = json.loads(path.read_text()).get("identity", {})
    changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
    if changed:
        k = changed[0]
        raise ValueError(
            f"{path.parent} holds a run with other settings ({k}: {previous.get(k)!r} there, "
            f"{identity.get(k)!r} now); pass another --output or remove that folder"
        )


def _process_state(device: str):
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def generate_pairs(
    config: PairsConfig, *, components=None, scorer: Scorer | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run (or resume) stage 2 as ``config`` says and return the manifest (totals of the shards done).

    Args:
        config: the settings; ``validate`` is called here.
        components: text-to-image components to use instead of loading ``config.model``.
        scorer: a ``Scorer`` to use instead of loading ``config.clip`` (tests pass fakes).
        progress: show a progress bar with the acceptance rate (main process only).

    Example:
        >>> manifest = generate_pairs(apply_preset("toy", {"triplets": "triplets.jsonl", "output": "pairs"}))
        >>> manifest["totals"]["pairs"]  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from ip2p.devices import pick_device, pick_dtype, process_device

    config.validate()
    triplets = read_triplets(config.triplets)[: config.limit]
    out = Path(config.output)
    identity = _identity(config, _file_digest(config.triplets), len(triplets))
    num_shards = -(-len(triplets) // config.shard_size)
    state = _process_state(config.device)
    worker = config.shard * state.num_processes + state.process_index
    workers = config.num_shards * state.num_processes
    _check_same_run(out / "config.json", identity)
    if state.is_main_process:
        write_text_atomic(
            out / "config.json", json.dumps({"identity": identity, "config": asdict(config)}, indent=2)
        )
    todo = [
        s
        for s in range(num_shards)
        if s % workers == worker and not (out / "stats" / f"{shard_name(s)}.json").is_file()
    ]

    if todo:
        # under `accelerate launch`, each process's own GPU ("auto" or "cuda" would put them all on the first)
        device = pick_device(process_device(config.device))
        dtype = pick_dtype(device, config.dtype)
        if components is None:
            from ip2p.models import load_pipeline_components

            components = load_pipeline_components(config.model, edit=False)
        sampler = PairSampler(
            components,
            device=device,
            dtype=dtype,
            scheduler=config.scheduler,
            timestep_spacing=config.timestep_spacing,
        )
        sampler.latent_shape(config.resolution)  # a bad resolution fails before any work
        if scorer is None:
            scorer = ClipScorer.from_pretrained(config.clip, device=device)
        items = sum(
            len(range(s * config.shard_size, min((s + 1) * config.shard_size, len(triplets)))) for s in todo
        )
        bar = tqdm(
            total=items,
            desc="pairs",
            unit="triplet",
            disable=not (progress and state.is_main_process) or None,
        )
        totals = {"pairs": 0, "with": 0, "done": 0, "passed": 0, "candidates": 0}
        for s in todo:
            run_shard(s, triplets, sampler, scorer, config, bar, totals)
        bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        return finalize(config, identity, num_shards)
    return {}  # other processes: the main process writes the manifest


def run_shard(
    shard: int,
    triplets: list[dict[str, Any]],
    sampler: PairSampler,
    scorer: Scorer,
    config: PairsConfig,
    bar=None,
    totals: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Generate, write and commit output shard ``shard``; returns its statistics."""
    from ip2p.datasets import write_parquet_shard
    from ip2p.pairs.original_format import write_item_folder

    out, name = Path(config.output), shard_name(shard)
    start_time = time.perf_counter()
    stats: dict[str, Any] = {
        "shard": shard,
        "triplets": 0,
        "candidates": 0,
        "passed": 0,
        "pairs": 0,
        "triplets_with_pairs": 0,
        "unet_calls": 0,
        "unet_evaluations": 0,
        "failures": [],
    }
    rows, score_lines = [], []
    first, last = shard * config.shard_size, min((shard + 1) * config.shard_size, len(triplets))
    items = [(item, triplets[item]) for item in range(first, last)]
    for item, result in _isolating_failures(sampler, scorer, items, config, stats):
        triplet = triplets[item]
        stats["triplets"] += 1
        if isinstance(result, ValueError):  # a triplet the control cannot handle: recorded, never fatal
            stats["failures"].append({"item": item, "error": str(result)})
            result = None
        if result is not None:
            stats["candidates"] += len(result.scores)
            stats["passed"] += result.passed
            stats["pairs"] += len(result.kept)
            stats["triplets_with_pairs"] += bool(result.kept)
            stats["unet_evaluations"] += result.unet_evaluations
            score_lines += [json.dumps(r) for r in result.scores]
            if config.format == "original":
                write_item_folder(out, item, triplet, result.kept)
            for rank, (meta, image_0, image_1) in enumerate(result.kept):
                rows.append(
                    {
                        "original_prompt": triplet["input"],
                        "original_image": image_0,
                        "edit_prompt": triplet["edit"],
                        "edited_prompt": triplet["output"],
                        "edited_image": image_1,
                        "item": item,
                        "rank": rank,
                        **meta,
                    }
                )
        if bar is not None and totals is not None:
            totals["done"] += 1
            if result is not None:
                totals["pairs"] += len(result.kept)
                totals["with"] += bool(result.kept)
                totals["passed"] += result.passed
                totals["candidates"] += len(result.scores)
            bar.set_postfix(
                pairs=totals["pairs"],
                accepted=f"{totals['with']}/{totals['done']}",
                passed=f"{totals['passed'] / max(1, totals['candidates']):.0%}",
                refresh=False,
            )
            bar.update(1)
    if config.format == "parquet" and rows:
        write_parquet_shard(rows, out / "data" / f"{name}.parquet")
    if config.log_scores:
        write_text_atomic(out / "scores" / f"{name}.jsonl", "".join(line + "\n" for line in score_lines))
    stats["seconds"] = round(time.perf_counter() - start_time, 3)
    write_text_atomic(out / "stats" / f"{name}.json", json.dumps(stats, indent=2))  # last: commits the shard
    return stats


def finalize(config: PairsConfig, identity: dict[str, Any], num_shards: int) -> dict[str, Any]:
    """Write the manifest (and seeds.json, the report) from whatever shards are committed."""
    out = Path(config.output)
    stats = [json.loads(p.read_text()) for p in sorted((out / "stats").glob("shard-*.json"))]
    totals = summarize(stats)
    manifest: dict[str, Any] = {
        "config": asdict(config),
        "identity": identity,
        "input": {
            "path": str(config.triplets),
            "sha256": identity["triplets_sha256"],
            "items": identity["num_items"],
        },
        "shards": {"total": num_shards, "done": len(stats), "complete": len(stats) == num_shards},
        "totals": totals,
        "summary": format_summary(totals),
        "versions": _versions(),
    }
    if config.format == "original":
        from ip2p.pairs.original_format import write_seeds_json

        write_seeds_json(out)
    if config.report:
        report_dir = out / "report"
        rows = read_scores((out / "scores").glob("shard-*.jsonl")) if (out / "scores").is_dir() else []
        thresholds = {
            "clip_sim_0": config.clip_threshold,
            "clip_sim_1": config.clip_threshold,
            "clip_sim_dir": config.clip_dir_threshold,
            "clip_sim_image": config.clip_img_threshold,
        }
        if rows:
            plot_histograms(rows, thresholds, report_dir / "scores.png")
        write_text_atomic(
            report_dir / "report.json",
            json.dumps(
                {"totals": totals, "summary": manifest["summary"], "scored_candidates": len(rows)}, indent=2
            ),
        )
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    from ip2p import __version__

    return {
        "ip2p": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
