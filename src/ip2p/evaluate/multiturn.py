"""Chained edits measured turn by turn (``ip2p evaluate --chain-mode``): multi-turn drift in each chaining mode.

A multi-turn test set (items with a ``chain``: the toy world's ``toy-multiturn``) holds sequences of edits, each
turn with the exact composed target. For every chaining mode of :mod:`ip2p.chain`, every sequence is edited turn
by turn, each turn's input the previous turn's output (the first turn's: the sequence's input image), and each
turn's output is measured against that turn's item: the metric plug-ins judge it against the composed target (the
toy oracle's ``oracle_success`` after turn k: every attribute of the scene after k edits right). All sequences'
turn k are edited together (``EditPipeline.edit_batch``), item i from the same per-item seed in every mode.

Layout of ``output``: ``run.json`` (settings), ``records.jsonl`` (one line per mode and item: mode, turn, chain,
metrics), ``summary.jsonl``/``.csv`` (one line per mode and turn: the means), ``examples.png`` (the first
sequences in every mode). A rerun redoes the modes whose records are incomplete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ip2p.evaluate.items import EvalItem, EvaluationError, item_seed, load_test_set
from ip2p.evaluate.metrics import measure_batch, metric_columns, selected_metrics
from ip2p.evaluate.run import EvalConfig, _prepare_inputs, read_records, write_summary
from ip2p.fileio import write_json_atomic
from ip2p.text.writer import JsonlLog


def group_chains(items: list[EvalItem]) -> list[list[int]]:
    """Indices of each sequence's turns, in order; EvaluationError where the test set has no chained items."""
    chains: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        if item.chain is None:
            raise EvaluationError(
                f"test item {item.id} is not a turn of a chain; --chain-mode needs a multi-turn test set "
                "(toy-multiturn)"
            )
        chains.setdefault(item.chain, []).append(i)
    for turns in chains.values():
        if turns != list(range(turns[0], turns[0] + len(turns))):
            raise EvaluationError(f"the turns of chain {items[turns[0]].chain} are not consecutive items")
    return list(chains.values())


def evaluate_chains(
    config: EvalConfig,
    pipe,
    edit_config,
    modes: list[str],
    *,
    threshold: float | None = None,
    items: list[EvalItem] | None = None,
    scorer=None,
) -> dict[str, Any]:
    """Edit every sequence turn by turn in each of ``modes`` and measure each turn; returns ``{"summary",
    "output"}`` (summary: one row per mode and turn)."""
    from tqdm.auto import tqdm

    from ip2p.chain import PASTE_THRESHOLD, chain_batch_turn, check_chain_options

    threshold = PASTE_THRESHOLD if threshold is None else threshold
    for mode in modes:
        check_chain_options(mode, threshold)
    if items is None:
        items = load_test_set(config.test_set, config.limit)
    chains = group_chains(items)
    metrics = selected_metrics(config.metrics)
    out = Path(config.output)
    identity = {
        "test_set": config.test_set,
        "limit": config.limit,
        "resolution": config.resolution,
        "seed": config.seed,
        "clip": config.clip,
        "metrics": config.metrics,
        "paste_threshold": threshold,
        "edit": json.loads(json.dumps(vars(edit_config), default=str)),
    }
    run_file = out / "run.json"
    if run_file.is_file() and json.loads(run_file.read_text()).get("identity") != identity:
        raise EvaluationError(f"{out} holds an evaluation with other settings; pass another --output")
    write_json_atomic(run_file, {"identity": identity, "modes": modes, "chains": len(chains)}, default=str)
    if scorer is None and config.clip:
        from ip2p.pairs.clip_score import ClipScorer

        scorer = ClipScorer.from_pretrained(config.clip, device=config.device)

    inputs = _prepare_inputs(items, config.resolution, config.size_multiple)  # each turn's exact input
    seeds = [item_seed(config.seed, i) for i in range(len(items))]
    done = {(r["mode"], r["item"]) for r in read_records(out)}
    todo = [m for m in modes if any((m, it.id) not in done for it in items)]
    log = JsonlLog(out / "records.jsonl")
    log.open()
    shown = sum(len(c) for c in chains[:4])  # the first four sequences' turns go into examples.png
    examples: dict[str, dict[int, Image.Image]] = {}
    turns = max(len(c) for c in chains)
    bar = tqdm(total=len(todo) * len(items), desc="chains", unit="edit", disable=not config.progress or None)
    try:
        for mode in todo:
            current = {c[0]: inputs[c[0]] for c in chains}  # the first turn's input: the sequence's image
            for k in range(turns):
                turn = [c[k] for c in chains if len(c) > k]
                for start in range(0, len(turn), config.batch_size):
                    batch = turn[start : start + config.batch_size]
                    edited = chain_batch_turn(
                        pipe,
                        [current[i] for i in batch],
                        [items[i].instruction for i in batch],
                        [seeds[i] for i in batch],
                        edit_config,
                        mode=mode,
                        threshold=threshold,
                    )
                    rows = measure_batch(
                        scorer, [items[i] for i in batch], [inputs[i] for i in batch], edited, metrics
                    )
                    for i, image in zip(batch, edited, strict=True):
                        current[i + 1] = image  # the next turn's input (ignored after a chain's last turn)
                        if i < shown:
                            examples.setdefault(mode, {})[i] = image
                    log.append(
                        {
                            "mode": mode,
                            "turn": k + 1,
                            "chain": items[i].chain,
                            "item": items[i].id,
                            "edit_type": items[i].edit_type,
                            "seed": seeds[i],
                            **row,
                        }
                        for i, row in zip(batch, rows, strict=True)
                    )
                    bar.update(len(batch))
    finally:
        bar.close()
        log.close()
    summary = summarize_chains(read_records(out), modes, metric_columns(metrics))
    write_summary(out, summary)
    if examples:
        _examples_grid(out / "examples.png", items[:shown], inputs, examples)
    return {"summary": summary, "output": str(out)}


def summarize_chains(records: list[dict], modes: list[str], columns) -> list[dict]:
    """One row per (mode, turn): the number of items and the mean of every metric column they have."""
    latest = {(r["mode"], r["item"]): r for r in records}  # a mode redone after a kill: its newest records
    rows = []
    for mode in modes:
        mine = [r for r in latest.values() if r["mode"] == mode]
        for turn in sorted({r["turn"] for r in mine}):
            at = [r for r in mine if r["turn"] == turn]
            row: dict[str, Any] = {"mode": mode, "turn": turn, "n": len(at)}
            for column in columns:
                values = [r[column] for r in at if r.get(column) is not None]
                if values:
                    row[column] = float(np.mean(values))
            rows.append(row)
    return rows


def chain_table(summary: list[dict], column: str = "oracle_success") -> str:
    """A Markdown table: one row per mode, ``column`` after each turn (in percent for shares)."""
    turns = sorted({r["turn"] for r in summary})
    modes = list(dict.fromkeys(r["mode"] for r in summary))
    lines = [
        f"| mode | {' | '.join(f'{column} after turn {t}' for t in turns)} |",
        "| --- |" + " --- |" * len(turns),
    ]
    for mode in modes:
        at = {r["turn"]: r.get(column) for r in summary if r["mode"] == mode}
        cells = [("—" if at.get(t) is None else f"{100 * at[t]:.1f}%") for t in turns]
        lines.append(f"| {mode} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _examples_grid(path: Path, items, inputs, examples: dict[str, dict[int, Image.Image]]) -> None:
    """One column per item (the first sequences' turns), one row per mode, below the exact targets."""
    from ip2p.imaging import make_grid, save_png

    n = len(items)
    rows = [("target", [it.target or inputs[i] for i, it in enumerate(items)])]
    rows += [(mode, [done.get(i, inputs[i]) for i in range(n)]) for mode, done in examples.items()]
    cells = [im.convert("RGB").resize(inputs[0].size) for _, row in rows for im in row]
    labels = [f"{name} t{items[i].id.rsplit('-t', 1)[-1]}" for name, _ in rows for i in range(n)]
    save_png(make_grid(cells, columns=n, labels=labels), path)
