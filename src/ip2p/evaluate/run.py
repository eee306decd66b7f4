"""The evaluation run (paper section 4): CLIP direction vs image similarity over guidance sweeps, against SDEdit.

For every method (the editor; the SDEdit baseline; any callable) and every setting of its sweep, each test item is
edited from the item's own seed (the same seed for every method and setting) and measured:

- ``clip_image``: CLIP image similarity of the input and the edited image (how much of the input is kept);
- ``clip_direction``: CLIP directional similarity, cos(E_I(edited) - E_I(input), E_T(output) - E_T(input)) (does
  the image change as the caption does; needs input and output captions);
- ``clip_text``: CLIP similarity of the edited image to the output caption;
- with a target image: ``l1``, ``l2`` (mean squared error), ``psnr`` (dB) in [0, 1] pixels, and ``clip_target``;
- the columns of every metric plug-in (``ip2p.registry.METRICS``; the toy world registers its oracle's
  ``oracle_edit``, ``oracle_preserved`` and ``oracle_success``), per edit type in the summary where the metric
  asks (with the CLIP axes).

Reference points (``REFERENCES``: the input unchanged, the exact target, the target through the editor's
autoencoder) are measured as methods of one point each, so every plane shows what no edit and a perfect edit score.

Images enter CLIP in [0, 1], resized (bicubic, no crop) to its input size and normalised with the model's mean and
std (``ClipScorer``). The original ``metrics/compute_metrics.py`` fed images in [-1, 1] to a CLIP expecting [0, 1],
so its absolute numbers are not comparable to ours; rankings of methods are.

Layout of ``output``::

    run.json            settings, models, CLIP model and preprocessing, seeds; a resumed run must match them
    records.jsonl       one line per (method, setting, item); append-only, so a rerun continues where it stopped
                        (records.rank{r}.jsonl per process under accelerate)
    summary.jsonl/.csv  one line per (method, setting): means, and per edit type those metrics ask for
    plot.png            directional (x) vs image similarity (y), one curve per method, as the paper's figures
                        (beside it, each metric plug-in's plane: the toy oracle's)
    examples.png        the first items edited by every method at every setting
    images/             the edited images of those items
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ip2p.evaluate.items import EvalItem, EvaluationError, item_seed, load_test_set
from ip2p.evaluate.methods import Method, setting_key
from ip2p.evaluate.metrics import measure_batch, metric_columns, selected_metrics, type_columns
from ip2p.evaluate.report import example_path, examples_grid, plot_curves
from ip2p.evaluate.stats import is_binary, wilson_interval
from ip2p.fileio import write_json_atomic, write_text_atomic
from ip2p.imaging import prepare_image, save_png
from ip2p.registry import Metric
from ip2p.text.writer import JsonlLog

CLIP_PREPROCESSING = (
    "images in [0, 1], bicubic resize (no crop) to the CLIP input size, normalised with the CLIP model's mean/std; "
    "the original compute_metrics.py fed [-1, 1]"
)


@dataclass
class EvalConfig:
    """Settings of an evaluation run (those that change results are checked on resume)."""

    output: str
    test_set: str = "toy"
    limit: int | None = None
    resolution: int = 512  # long side the inputs are resized to (the original: 512; the toy world: 64)
    size_multiple: int = 8
    batch_size: int = 8
    seed: int = 0
    clip: str | None = None  # None: no CLIP metrics
    examples: int = 4  # items shown in examples.png
    progress: bool = True
    device: str = "cpu"  # where CLIP runs
    # the metric plug-ins (ip2p.registry.METRICS) measured beside CLIP and pixels; None: every registered one
    metrics: list[str] | None = None

    def identity(self, methods: list[Method]) -> dict[str, Any]:
        return {
            "test_set": self.test_set,
            "limit": self.limit,
            "resolution": self.resolution,
            "seed": self.seed,
            "clip": self.clip,
            "metrics": self.metrics,
            "methods": {m.name: _jsonable(m.describe) for m in methods},
        }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _prepare_inputs(items: list[EvalItem], resolution: int, multiple: int) -> list[Image.Image]:
    """Every input resized as the editor would (the original's fit policy), so all methods see the same pixels."""
    return [
        prepare_image(it.image, resolution=resolution, mode="fit", multiple=multiple).image for it in items
    ]


def _batches(indices: list[int], inputs: list[Image.Image], size: int) -> list[list[int]]:
    """Consecutive runs of same-sized inputs, at most ``size`` long (methods batch inputs of one size)."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in indices:
        by_size.setdefault(inputs[i].size, []).append(i)
    out = []
    for group in by_size.values():
        out += [group[j : j + size] for j in range(0, len(group), size)]
    return out


def _record_files(out: Path) -> list[Path]:
    return sorted(out.glob("records*.jsonl"))


def read_records(out: str | os.PathLike) -> list[dict]:
    """Every record of a run (all processes' files), complete lines only."""
    rows = []
    for path in _record_files(Path(out)):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a partial last line of a killed run; it is redone on resume
    return rows


def evaluate(
    config: EvalConfig, methods: list[Method], *, scorer=None, items: list[EvalItem] | None = None
) -> dict:
    """Run (or resume) an evaluation; write records, summary, plot and examples; return the summary rows.

    Args:
        config: the run's settings.
        methods: the methods to compare (``editor_method``, ``sdedit_method`` or your own ``Method``).
        scorer: a ``ClipScorer`` (default: loaded from ``config.clip``; none when that is None).
        items: the test items (default: loaded from ``config.test_set``).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    out = Path(config.output)
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise EvaluationError(f"method names must differ, got {names}")
    if items is None:
        items = load_test_set(config.test_set, config.limit)
    elif config.limit is not None:
        items = items[: config.limit]
    for m in methods:
        lacking = next((it.id for it in items if it.target is None), None) if m.needs_targets else None
        if lacking is not None:
            raise EvaluationError(f"method {m.name!r} needs target images; test item {lacking} has none")
    metrics = selected_metrics(config.metrics)
    state = PartialState(cpu=config.device == "cpu")
    identity = config.identity(methods)
    run_file = out / "run.json"
    if run_file.is_file():
        previous = json.loads(run_file.read_text()).get("identity", {})
        changed = [k for k in identity if previous.get(k) != identity[k]]
        if changed:
            raise EvaluationError(
                f"{out} holds an evaluation with other settings ({changed[0]} differs); "
                "pass another --output or remove that folder"
            )
    if scorer is None and config.clip:
        from ip2p.pairs.clip_score import ClipScorer

        scorer = ClipScorer.from_pretrained(config.clip, device=config.device)
    if state.is_main_process:
        write_json_atomic(
            run_file,
            {
                "identity": identity,
                "items": len(items),
                "clip_preprocessing": CLIP_PREPROCESSING if scorer is not None else None,
                "item_seeds": f"item_seed(seed={config.seed}, index) = sha256('ip2p-eval:seed:index')[:4]",
                "settings": {m.name: m.settings for m in methods},
            },
            default=str,
        )
    state.wait_for_everyone()

    inputs = _prepare_inputs(items, config.resolution, config.size_multiple)
    seeds = [item_seed(config.seed, i) for i in range(len(items))]
    mine = list(range(state.process_index, len(items), state.num_processes))
    log = JsonlLog(
        out / ("records.jsonl" if state.num_processes == 1 else f"records.rank{state.process_index}.jsonl")
    )
    log.open()  # cuts a partial last line a kill left
    done = {(r["method"], r["setting"], r["item"]) for r in read_records(out)}  # every process's records
    jobs = [
        (m, s, batch)
        for m in methods
        for s in m.settings
        for batch in _batches(
            [i for i in mine if (m.name, setting_key(s), items[i].id) not in done], inputs, config.batch_size
        )
    ]
    bar = tqdm(
        total=sum(len(b) for _, _, b in jobs),
        desc="evaluate",
        unit="edit",
        disable=not (config.progress and state.is_main_process) or None,
    )
    try:
        for method, setting, batch in jobs:
            key = setting_key(setting)
            edited = method.edit(
                [inputs[i] for i in batch], [items[i] for i in batch], setting, [seeds[i] for i in batch]
            )
            if len(edited) != len(batch):
                raise EvaluationError(
                    f"method {method.name!r} returned {len(edited)} images for {len(batch)} inputs"
                )
            rows = measure_batch(
                scorer, [items[i] for i in batch], [inputs[i] for i in batch], edited, metrics
            )
            for i, image in zip(batch, edited, strict=True):
                if i < config.examples:
                    save_png(image, example_path(out, method.name, key, items[i].id))
            log.append(
                {
                    "method": method.name,
                    "setting": key,
                    **{k: float(v) for k, v in setting.items()},
                    "item": items[i].id,
                    "edit_type": items[i].edit_type,
                    "seed": seeds[i],
                    **row,
                }
                for i, row in zip(batch, rows, strict=True)
            )
            bar.update(len(batch))
            bar.set_postfix_str(f"{method.name} {key}")
    finally:
        bar.close()
        log.close()
    state.wait_for_everyone()
    summary: list[dict] = []
    if state.is_main_process:
        summary = summarize(read_records(out), methods, metrics)
        write_summary(out, summary)
        if any("clip_direction" in r and "clip_image" in r for r in summary):
            plot_curves(summary, out / "plot.png")
        examples_grid(out, methods, items[: config.examples], inputs[: config.examples])
    return {"summary": summary, "output": str(out)}


def summarize(
    records: list[dict], methods: list[Method], metrics: dict[str, Metric] | None = None
) -> list[dict]:
    """One row per (method, setting) in sweep order: the number of items, the mean of every metric column
    (:func:`metric_columns`), and where the items have edit types the means of :func:`type_columns` per type
    (``clip_image/<type>``, the oracle's ``oracle_success/<type>`` and so on)."""
    columns, by_type = metric_columns(metrics), type_columns(metrics)
    rows = []
    for method in methods:
        for setting in method.settings:
            key = setting_key(setting)
            mine = [r for r in records if r["method"] == method.name and r["setting"] == key]
            if not mine:
                continue
            row: dict[str, Any] = {"method": method.name, "setting": key, **setting, "n": len(mine)}
            for metric in columns:
                values = [r[metric] for r in mine if metric in r and r[metric] is not None]
                if values:
                    row[metric] = float(np.mean(values))
                    _add_interval(row, metric, values)
            for kind in sorted({r["edit_type"] for r in mine if r.get("edit_type")}):
                for metric in by_type:
                    values = [r[metric] for r in mine if r.get("edit_type") == kind and metric in r]
                    if values:
                        row[f"{metric}/{kind}"] = float(np.mean(values))
                        _add_interval(row, metric, values, kind)
            rows.append(row)
    return rows


def _add_interval(row: dict[str, Any], metric: str, values: list[float], kind: str | None = None) -> None:
    """For a success column (every value 0 or 1), its 95% Wilson interval: ``<metric>_ci_low`` and
    ``<metric>_ci_high`` (``.../<type>`` per edit type)."""
    if not is_binary(values):
        return
    low, high = wilson_interval(sum(values), len(values))
    suffix = f"/{kind}" if kind else ""
    row[f"{metric}_ci_low{suffix}"], row[f"{metric}_ci_high{suffix}"] = low, high


def write_summary(out: Path, summary: list[dict]) -> None:
    write_text_atomic(out / "summary.jsonl", "".join(json.dumps(r) + "\n" for r in summary))
    columns = list(dict.fromkeys(k for r in summary for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(summary)
    write_text_atomic(out / "summary.csv", buf.getvalue())
