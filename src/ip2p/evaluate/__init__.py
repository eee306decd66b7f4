"""``ip2p evaluate`` (paper section 4): CLIP direction vs image similarity over guidance sweeps, against SDEdit.

- :mod:`.items`: test items, test sets (registered names, JSONL, edit datasets), per-item seeds;
- :mod:`.methods`: the editor's guidance sweeps, the SDEdit baseline, reference points;
- :mod:`.metrics`: CLIP and pixel metrics, plug-in metrics (``ip2p.registry.METRICS``), the planes;
- :mod:`.run`: ``EvalConfig`` and :func:`evaluate`: resumable records, the summary;
- :mod:`.report`: the plot, the examples grid, curve comparison, the printed summary;
- :mod:`.config`: ``EvalRunConfig`` (the command's settings, torch-free) and :func:`run_evaluation`;
- :mod:`.benchmarks`, :mod:`.bench_metrics`, :mod:`.bench_run`: MagicBrush and Emu Edit (``--benchmark``).

The names below are imported on first use, so ``ip2p evaluate --help`` does not import torch.

Example::

    from ip2p.evaluate import EvalRunConfig, run_evaluation
    result = run_evaluation(EvalRunConfig(model="toy", output="runs/eval", methods="ip2p"))
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "items": ("EvalItem", "EvaluationError", "item_seed", "load_test_set"),
    "methods": (
        "PAPER_IMAGE_GUIDANCE",
        "PAPER_TEXT_GUIDANCE",
        "REFERENCES",
        "SDEDIT_STRENGTHS",
        "TEXT_SWEEP",
        "EditFn",
        "Method",
        "editor_method",
        "guidance_grid",
        "reference_method",
        "sdedit_method",
        "setting_key",
    ),
    "metrics": (
        "PLANES",
        "measure_batch",
        "metric_columns",
        "pixel_metrics",
        "selected_metrics",
        "to_unit_tensor",
        "type_columns",
    ),
    "run": ("CLIP_PREPROCESSING", "EvalConfig", "evaluate", "read_records", "summarize", "write_summary"),
    "report": ("comparison_lines", "curve_margin", "examples_grid", "plot_curves", "summary_table"),
    "config": ("EvalRunConfig", "parse_floats", "run_evaluation"),
    "benchmarks": ("BenchItem", "read_emu_edit", "read_magicbrush"),
    "bench_metrics": ("ClipEncoder", "DinoEncoder", "emu_edit_scores", "magicbrush_scores", "pixel_distances"),
    "bench_run": ("BENCHMARKS", "BenchConfig", "compare_runs", "run_benchmark"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'ip2p.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ip2p.evaluate.{_WHERE[name]}"), name)
