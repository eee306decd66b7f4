"""A benchmark run: every method edits the benchmark's items, the outputs are saved, and each is measured as the
benchmark's own evaluation does (:mod:`ip2p.evaluate.bench_metrics`).

Benchmarks (``BENCHMARKS``):

- ``magicbrush``: single-turn; every turn edited from its ground-truth source; the summary averages all turns
  (the evaluation script's "all turn" setting: the paper's single-turn rows).
- ``magicbrush-multi``: multi-turn; turn 1 from the session's photo, turn k from the method's own output of
  turn k-1; the summary's means are of the final turns (the script's "final turn" setting: the paper's
  multi-turn rows), with every turn's means beside them (``l1/turn2`` ...).
- ``emu-edit``: every item from its input; means overall and per task (``clip_dir/background`` ...).

Methods are those of :mod:`ip2p.evaluate.methods` (the editor, SDEdit, the references), so the same editors are
compared on the benchmarks as in ``ip2p evaluate``'s sweeps. Inputs are resized as the editor would (the
original's fit policy at ``resolution``); the metrics compare each output with the benchmark's images at their
own sizes.

Layout of ``output``::

    run.json                 settings, the data read (format, split, counts), metric models and preprocessing
    records.jsonl            one line per (method, setting, item): the metrics and the output's path; append-only,
                             so a rerun continues where it stopped (records.rank{r}.jsonl per process under
                             `accelerate launch`, which splits the sessions over its processes)
    images/<method>/<setting>/<item>.png   every output (a multi-turn chain resumes from them)
    summary.jsonl/.csv/.md   one row per (method, setting): means overall and per turn or task
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ip2p.evaluate.benchmarks import BenchItem
from ip2p.evaluate.items import EvalItem, EvaluationError, item_seed
from ip2p.evaluate.methods import Method, setting_key
from ip2p.fileio import write_json_atomic, write_text_atomic

BENCHMARKS = {
    "magicbrush": "MagicBrush single-turn: each turn from its ground-truth source; L1, L2, CLIP-I, DINO, CLIP-T "
    "against the target, averaged over all turns",
    "magicbrush-multi": "MagicBrush multi-turn: each session's turns chained from the first source; the same "
    "metrics of the final turns (and of each turn)",
    "emu-edit": "Emu Edit test set: CLIPdir, CLIPimg, CLIPout, L1, DINO against the input, overall and per task",
}


DEFAULT_DATA = {
    "magicbrush": "osunlp/MagicBrush",
    "magicbrush-multi": "osunlp/MagicBrush",
    "emu-edit": "facebook/emu_edit_test_set",
}


@dataclass
class BenchConfig:
    """Settings of a benchmark run (those that change results are checked on resume)."""

    output: str
    benchmark: str = "magicbrush"
    data: str = (
        "osunlp/MagicBrush"  # a hub id, save_to_disk folder, Parquet, MagicBrush test folder, or toy:N
    )
    split: str | None = None
    captions: str | None = None  # MagicBrush's local_captions.json
    limit: int | None = None  # the first N sessions (MagicBrush) or items
    resolution: int = 512
    size_multiple: int = 8
    batch_size: int = 8
    seed: int = 0
    clip_model: str | None = None  # None: no CLIP metrics
    dino_model: str | None = None  # None: no DINO
    device: str = "cpu"  # where the metric models run
    progress: bool = True
    read: dict[str, Any] = field(default_factory=dict)  # filled by the run: what the reader found

    def identity(self, methods: list[Method]) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "data": self.data,
            "split": self.split,
            "captions": self.captions,
            "limit": self.limit,
            "resolution": self.resolution,
            "seed": self.seed,
            "clip_model": self.clip_model,
            "dino_model": self.dino_model,
            "methods": {m.name: json.loads(json.dumps(m.describe, default=str)) for m in methods},
        }


def read_benchmark(config: BenchConfig) -> list[list[BenchItem]]:
    """The run's items as sessions (lists of turns; one turn each outside MagicBrush); fills ``config.read``."""
    from ip2p.evaluate.benchmarks import read_emu_edit, read_magicbrush, registered_test_set
    from ip2p.registry import TEST_SETS, RegistryError, find_counted

    if config.benchmark not in BENCHMARKS:
        raise EvaluationError(
            f"--benchmark: unknown {config.benchmark!r}; choose from {', '.join(BENCHMARKS)}"
        )
    try:
        named = find_counted(TEST_SETS, config.data)
    except RegistryError:
        named = None
    if named is not None:  # a registered test set with targets (the toy world's): MagicBrush-style metrics
        if config.benchmark != "magicbrush":
            raise EvaluationError(
                f"--data {config.data}: a registered test set runs as --benchmark magicbrush"
            )
        items = registered_test_set(config.data, config.limit)
        config.read = {"format": "registered test set", "items": len(items)}
        return [[it] for it in items]
    if config.benchmark == "emu-edit":
        items, config.read = read_emu_edit(config.data, config.split or "test", config.limit)
        return [[it] for it in items]
    sessions, config.read = read_magicbrush(config.data, config.split, config.captions, config.limit)
    return sessions


def _eval_item(item: BenchItem) -> EvalItem:
    return EvalItem(
        id=item.id,
        image=item.image,
        instruction=item.instruction,
        input_caption=item.input_caption,
        output_caption=item.caption,
        target=item.target,
        edit_type=item.task,
    )


def output_path(out: Path, method: str, key: str, item: str) -> Path:
    """Where the output of ``item`` by ``method`` at setting ``key`` is saved."""
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in key) or "default"
    return out / "images" / method / safe / f"{item}.png"


def read_records(out: str | Path) -> list[dict]:
    """Every record of a run: ``records.jsonl``, or each process's ``records.rank{r}.jsonl``."""
    return [r for path in sorted(Path(out).glob("records*.jsonl")) for r in _records(path)]


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a partial last line of a killed run; that item is redone
    return rows


def run_benchmark(
    config: BenchConfig, methods: list[Method], *, clip=None, dino=None, sessions=None
) -> dict[str, Any]:
    """Run (or resume) ``config.benchmark`` for every method; return ``{"summary", "output", "read"}``.

    Args:
        config: the run's settings.
        methods: editors, baselines or references (:mod:`ip2p.evaluate.methods`).
        clip, dino: metric models (default: loaded from ``config.clip_model`` / ``config.dino_model``).
        sessions: the items (default: read from ``config.data``).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from ip2p.evaluate.bench_metrics import PREPROCESSING, ClipEncoder, DinoEncoder
    from ip2p.imaging import prepare_image, save_png
    from ip2p.text.writer import JsonlLog

    out = Path(config.output)
    if len({m.name for m in methods}) != len(methods):
        raise EvaluationError(f"method names must differ, got {[m.name for m in methods]}")
    if sessions is None:
        sessions = read_benchmark(config)
    elif config.limit is not None:
        sessions = sessions[: config.limit]
    multi = config.benchmark == "magicbrush-multi"
    if config.benchmark == "emu-edit" and any(m.needs_targets for m in methods):
        raise EvaluationError("the Emu Edit test set has no target images; drop the target references")
    identity = config.identity(methods)
    run_file = out / "run.json"
    if run_file.is_file():
        previous = json.loads(run_file.read_text()).get("identity", {})
        changed = [k for k in identity if previous.get(k) != identity[k]]
        if changed:
            raise EvaluationError(
                f"{out} holds a benchmark run with other settings ({changed[0]} differs); pass another --output"
            )
    if clip is None and config.clip_model:
        clip = ClipEncoder.from_pretrained(config.clip_model, device=config.device)
    if dino is None and config.dino_model:
        dino = DinoEncoder.from_pretrained(config.dino_model, device=config.device)
    # under `accelerate launch` the sessions are split over the processes (a chain stays in one)
    state = PartialState(cpu=config.device == "cpu")
    if state.is_main_process:
        write_json_atomic(
            run_file,
            {
                "identity": identity,
                "read": config.read,
                "benchmark": BENCHMARKS[config.benchmark],
                "metric_models": {"clip": getattr(clip, "name", None), "dino": getattr(dino, "name", None)},
                "preprocessing": PREPROCESSING,
                "item_seeds": f"item_seed(seed={config.seed}, index over the turns in order)",
                "settings": {m.name: m.settings for m in methods},
            },
            default=str,
        )
    state.wait_for_everyone()
    seeds = {it.id: item_seed(config.seed, i) for i, it in enumerate(it for s in sessions for it in s)}
    last_turn = {s[-1].id for s in sessions}
    sessions = sessions[state.process_index :: state.num_processes]
    flat = [it for s in sessions for it in s]
    name = "records.jsonl" if state.num_processes == 1 else f"records.rank{state.process_index}.jsonl"
    log = JsonlLog(out / name)
    log.open()  # cuts a partial last line a kill left
    done = {(r["method"], r["setting"], r["item"]) for r in read_records(out)}  # every process's records
    todo = sum(
        1 for m in methods for s in m.settings for it in flat if (m.name, setting_key(s), it.id) not in done
    )
    show = config.progress and state.is_main_process
    bar = tqdm(total=todo, desc=config.benchmark, unit="edit", disable=not show or None)

    def prepared(image: Image.Image) -> Image.Image:
        return prepare_image(
            image, resolution=config.resolution, mode="fit", multiple=config.size_multiple
        ).image

    def run_wave(method: Method, setting: dict[str, float], wave: list[BenchItem]) -> None:
        """Edit and measure the items of ``wave`` not yet done, in batches of one input size."""
        key = setting_key(setting)
        inputs = {}
        for it in (it for it in wave if (method.name, key, it.id) not in done):
            source = it.image
            if multi and it.turn > 1:  # the chain: this method's own output of the previous turn
                previous = output_path(out, method.name, key, f"{it.session}-{it.turn - 1}")
                source = Image.open(previous).convert("RGB")
            inputs[it.id] = prepared(source)
        groups: dict[tuple[int, int], list[BenchItem]] = {}
        for it in wave:
            if it.id in inputs:
                groups.setdefault(inputs[it.id].size, []).append(it)
        batches = [
            g[j : j + config.batch_size] for g in groups.values() for j in range(0, len(g), config.batch_size)
        ]
        for batch in batches:
            edited = method.edit(
                [inputs[it.id] for it in batch],
                [_eval_item(it) for it in batch],
                setting,
                [seeds[it.id] for it in batch],
            )
            if len(edited) != len(batch):
                raise EvaluationError(
                    f"method {method.name!r} returned {len(edited)} images for {len(batch)} inputs"
                )
            edited = [im.convert("RGB") for im in edited]
            records = []
            for it, image, row in zip(
                batch, edited, _measure(config.benchmark, batch, edited, clip, dino), strict=True
            ):
                path = save_png(image, output_path(out, method.name, key, it.id))
                records.append(
                    {
                        "method": method.name,
                        "setting": key,
                        **{k: float(v) for k, v in setting.items()},
                        "item": it.id,
                        "session": it.session,
                        "turn": it.turn,
                        "final": it.id in last_turn,
                        "task": it.task,
                        "seed": seeds[it.id],
                        "output": str(path.relative_to(out)),
                        **row,
                    }
                )
            log.append(records)
            bar.update(len(batch))
            bar.set_postfix_str(f"{method.name} {key}")

    try:
        for method in methods:
            for setting in method.settings:
                if multi:  # one pass per turn index: turn k of a chain needs the output of turn k-1
                    for t in range(max((len(s) for s in sessions), default=0)):
                        run_wave(method, setting, [s[t] for s in sessions if len(s) > t])
                elif flat:
                    run_wave(method, setting, flat)
    finally:
        bar.close()
        log.close()
    state.wait_for_everyone()
    summary: list[dict] = []  # empty on the other processes
    if state.is_main_process:
        summary = summarize(config.benchmark, read_records(out), methods)
        write_summary(out, summary, config.benchmark)
    return {"summary": summary, "output": str(out), "read": config.read}


def _measure(benchmark: str, batch: list[BenchItem], edited: list[Image.Image], clip, dino) -> list[dict]:
    from ip2p.evaluate.bench_metrics import emu_edit_scores, magicbrush_scores

    if benchmark == "emu-edit":
        return emu_edit_scores(
            [it.image for it in batch],
            edited,
            [it.input_caption for it in batch],
            [it.caption for it in batch],
            clip,
            dino,
        )
    return magicbrush_scores(edited, [it.target for it in batch], [it.caption for it in batch], clip, dino)


def metric_columns(benchmark: str) -> tuple[str, ...]:
    from ip2p.evaluate.bench_metrics import EMU_EDIT_COLUMNS, MAGICBRUSH_COLUMNS

    return EMU_EDIT_COLUMNS if benchmark == "emu-edit" else MAGICBRUSH_COLUMNS


def summarize(benchmark: str, records: list[dict], methods: list[Method]) -> list[dict]:
    """One row per (method, setting): ``n`` and the mean of each metric over the benchmark's items (multi-turn:
    the final turns), then the means per turn (MagicBrush: ``l1/turn1`` ...) or per task (``clip_dir/add`` ...)."""
    columns = metric_columns(benchmark)
    rows = []
    for method in methods:
        for setting in method.settings:
            key = setting_key(setting)
            mine = [r for r in records if r["method"] == method.name and r["setting"] == key]
            if benchmark == "magicbrush-multi":
                scored = [r for r in mine if r.get("final")]
            else:
                scored = mine
            if not scored:
                continue
            row: dict[str, Any] = {"benchmark": benchmark, "method": method.name, "setting": key, **setting}
            row["n"] = len(scored)
            for c in columns:
                values = [r[c] for r in scored if r.get(c) is not None]
                if values:
                    row[c] = float(np.mean(values))
            if benchmark.startswith("magicbrush") and len({r["turn"] for r in mine}) > 1:
                groups = {
                    f"turn{t}": [r for r in mine if r["turn"] == t] for t in sorted({r["turn"] for r in mine})
                }
            else:
                groups = {}
            groups |= {
                str(k): [r for r in mine if r.get("task") == k]
                for k in sorted({r["task"] for r in mine if r.get("task")})
            }
            if len(groups) > 1:
                for name, group in groups.items():
                    row[f"n/{name}"] = len(group)
                    for c in columns:
                        values = [r[c] for r in group if r.get(c) is not None]
                        if values:
                            row[f"{c}/{name}"] = float(np.mean(values))
            rows.append(row)
    return rows


def markdown_table(summary: list[dict], columns: list[str], label: str = "method") -> str:
    """Rows of ``summary`` as a Markdown table: ``label`` column (method and setting), ``n``, then those of
    ``columns`` that some row has."""
    columns = [c for c in columns if any(isinstance(r.get(c), float) for r in summary)]
    lines = [f"| {label} | setting | n | " + " | ".join(columns) + " |", "|" + " --- |" * (3 + len(columns))]
    for r in summary:
        cells = " | ".join(f"{r[c]:.4f}" if isinstance(r.get(c), float) else "-" for c in columns)
        lines.append(f"| {r.get(label, r['method'])} | {r['setting'] or '-'} | {r['n']} | {cells} |")
    return "\n".join(lines)


def summary_markdown(summary: list[dict], benchmark: str) -> str:
    """The overall table, then one table per turn or task."""
    columns = list(metric_columns(benchmark))
    text = [f"# {benchmark}", "", BENCHMARKS[benchmark], "", markdown_table(summary, columns)]
    groups = list(dict.fromkeys(k[2:] for r in summary for k in r if k.startswith("n/")))
    for group in groups:
        rows = [
            {"method": r["method"], "setting": r["setting"], "n": r[f"n/{group}"]}
            | {c: r[f"{c}/{group}"] for c in columns if f"{c}/{group}" in r}
            for r in summary
            if f"n/{group}" in r
        ]
        text += ["", f"## {group}", "", markdown_table(rows, columns)]
    return "\n".join(text) + "\n"


def write_summary(out: Path, summary: list[dict], benchmark: str) -> None:
    write_text_atomic(out / "summary.jsonl", "".join(json.dumps(r) + "\n" for r in summary))
    columns = list(dict.fromkeys(k for r in summary for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(summary)
    write_text_atomic(out / "summary.csv", buf.getvalue())
    write_text_atomic(out / "summary.md", summary_markdown(summary, benchmark))


def compare_runs(folders: list[str]) -> str:
    """The summaries of several benchmark runs side by side, one Markdown table per benchmark: a row per (run,
    method, setting), a column per metric.

    Example:
        >>> print(compare_runs(["runs/mb-ip2p", "runs/mb-magicbrush"]))  # doctest: +SKIP
    """
    by_benchmark: dict[str, list[dict]] = {}
    for folder in folders:
        path = Path(folder).expanduser() / "summary.jsonl"
        if not path.is_file():
            raise EvaluationError(
                f"--compare: {folder} holds no summary.jsonl (not a finished benchmark run)"
            )
        for row in _records(path):
            run = f"{Path(folder).name}: {row['method']}"
            by_benchmark.setdefault(row.get("benchmark", "?"), []).append({**row, "run": run})
    text = []
    for benchmark, rows in by_benchmark.items():
        columns = (
            list(metric_columns(benchmark))
            if benchmark in BENCHMARKS
            else sorted({k for r in rows for k, v in r.items() if isinstance(v, float) and "/" not in k})
        )
        text += [f"{benchmark}:", "", markdown_table(rows, columns, label="run"), ""]
    return "\n".join(text).rstrip() + "\n"


def run_from_settings(settings, methods: list[Method], size_multiple: int, device) -> dict[str, Any]:
    """``ip2p evaluate --benchmark``: the run of :class:`~ip2p.evaluate.config.EvalRunConfig` ``settings``
    (resolved) with its methods; returns what ``run_evaluation`` does, the report being the Markdown summary."""
    from ip2p.devices import pick_device

    def model(name: str | None) -> str | None:
        return None if name in (None, "", "none") else name

    config = BenchConfig(
        output=settings.output,
        benchmark=settings.benchmark,
        data=settings.data or DEFAULT_DATA[settings.benchmark],
        split=settings.split,
        captions=settings.captions,
        limit=settings.limit,
        resolution=settings.resolution,
        size_multiple=size_multiple,
        batch_size=settings.batch_size,
        seed=settings.seed,
        clip_model=model(settings.clip_model),
        dino_model=model(settings.dino_model),
        device=str(pick_device(device)),
        progress=settings.progress,
    )
    result = run_benchmark(config, methods)
    return {
        "summary": result["summary"],
        "output": result["output"],
        "methods": [m.name for m in methods],
        "references": [],
        "report": summary_markdown(result["summary"], config.benchmark),
    }
