"""What ``ip2p evaluate`` shows (paper section 4): the plot in the CLIP plane (and each metric plug-in's plane),
the grid of examples, the comparison of two methods' curves, and the printed summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ip2p.evaluate.items import EvalItem
from ip2p.evaluate.methods import REFERENCES, Method, setting_key
from ip2p.evaluate.metrics import PLANES
from ip2p.imaging import make_grid, save_figure, save_png
from ip2p.registry import METRICS

TABLE_COLUMNS = ("clip_direction", "clip_image", "clip_text", "psnr")  # built-in columns of the printed table


def headline_columns() -> list[str]:
    """Each registered metric's headline column (the toy oracle's ``oracle_success``)."""
    return list(dict.fromkeys(m.headline for _, m in METRICS.items() if m.headline))


def example_path(out: Path, method: str, key: str, item: str) -> Path:
    """Where the edit of an example item by ``method`` at setting ``key`` is saved."""
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in f"{key}")
    return out / "images" / method / safe / f"{item}.png"


def plot_curves(summary: list[dict], path: Path, title: str | None = None) -> Path:
    """Directional similarity (x) vs image similarity (y), one curve per method, its points labelled with the
    swept value (the paper's figures 8 and 10; higher and further right is better). Where the rows carry the
    columns of another plane of ``PLANES`` (the toy oracle's), a further panel draws the same curves in it.
    Reference points (``REFERENCES``) are stars, joined to the input's by a dotted line: the exact edits, each
    made or left undone at random."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = [
        plane
        for plane, (x, y, _, _) in PLANES.items()
        if any(x in r and y in r for r in summary) or plane == "clip"
    ]
    fig, axes = plt.subplots(1, len(planes), figsize=(5.5 * len(planes), 4.2), dpi=120, squeeze=False)
    for ax, plane in zip(axes[0], planes, strict=True):
        x_key, y_key, x_label, y_label = PLANES[plane]
        references = {
            r["method"]: (r[x_key], r[y_key])
            for r in summary
            if r["method"] in REFERENCES and not r["setting"] and x_key in r and y_key in r
        }
        for i, (name, (x, y)) in enumerate(references.items()):
            ax.plot([x], [y], marker="*", markersize=11, linestyle="none", color="0.35")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4 if i % 2 else -10), fontsize=7)
            # the dotted line: the exact edits, each made or left undone at random
            if name != "input" and "input" in references:
                ax.plot(
                    *zip(references["input"], (x, y), strict=True), linestyle=":", color="0.6", linewidth=1
                )
        for method in dict.fromkeys(r["method"] for r in summary if r["method"] not in references):
            rows = [r for r in summary if r["method"] == method and x_key in r and y_key in r]
            if not rows:
                continue
            xs, ys = [r[x_key] for r in rows], [r[y_key] for r in rows]
            ax.plot(xs, ys, marker="o", label=method)
            for r, x, y in zip(rows, xs, ys, strict=True):
                swept = _swept_value(r, rows)
                if swept:
                    ax.annotate(swept, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def _swept_value(row: dict, rows: list[dict]) -> str:
    """The label of a point: the setting values that vary along its curve."""
    keys = [k for k in ("strength", "image_guidance_scale", "text_guidance_scale") if k in row]
    varying = [k for k in keys if len({r.get(k) for r in rows}) > 1]
    return ",".join(f"{row[k]:g}" for k in varying)


def examples_grid(
    out: Path, methods: list[Method], items: list[EvalItem], inputs: list[Image.Image]
) -> Path | None:
    """examples.png: per item and method a row (the input, then the edit at each setting), labelled."""
    images, labels, columns = [], [], 1 + max(len(m.settings) for m in methods)
    for item, image in zip(items, inputs, strict=True):
        for method in methods:
            row = [image]
            names = [f"{method.name}: {item.instruction}"]
            for setting in method.settings:
                path = example_path(out, method.name, setting_key(setting), item.id)
                row.append(
                    Image.open(path).convert("RGB")
                    if path.is_file()
                    else Image.new("RGB", image.size, "white")
                )
                names.append(_swept_value(setting, method.settings) or setting_key(setting) or method.name)
            pad = columns - len(row)
            images += row + [Image.new("RGB", image.size, "white")] * pad
            labels += names + [""] * pad
    if not images:
        return None
    size = max(images[0].size)
    scale = max(1, math.ceil(128 / size))  # toy-sized images are enlarged so the labels fit
    images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    path = out / "examples.png"
    save_png(make_grid(images, columns, labels), path)
    return path


def curve_margin(
    summary: list[dict], better: str, worse: str, plane: str = "clip", edit_type: str | None = None
) -> dict[str, Any]:
    """How far ``better``'s curve lies above ``worse``'s in a plane of ``PLANES`` (default the paper's: CLIP
    directional similarity x, image similarity y); with ``edit_type``, in that plane drawn from the items of that
    type of edit alone (the summary's ``<metric>/<type>`` means).

    ``margins``: at each of ``worse``'s points whose x falls within ``better``'s range, ``better``'s y
    (interpolated linearly along x) minus ``worse``'s. ``dominated``: how many of ``worse``'s points some point of
    ``better`` beats on both axes at once (no interpolation, so it also counts points outside the overlap).
    Also the best value of each metric plug-in's headline column for each (``best_oracle_success/<method>`` in the
    toy world), where measured."""
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}; choose from {', '.join(PLANES)}")
    x_key, y_key = PLANES[plane][:2]
    if edit_type is not None:
        x_key, y_key = f"{x_key}/{edit_type}", f"{y_key}/{edit_type}"
    a = sorted((r[x_key], r[y_key]) for r in summary if r["method"] == better and x_key in r and y_key in r)
    b = [(r[x_key], r[y_key]) for r in summary if r["method"] == worse and x_key in r and y_key in r]
    margins = []
    if len(a) >= 1:
        xs, ys = [p[0] for p in a], [p[1] for p in a]
        for x, y in b:
            if xs[0] <= x <= xs[-1]:
                margins.append(float(np.interp(x, xs, ys)) - y)
    result: dict[str, Any] = {
        "plane": plane,
        "edit_type": edit_type,
        "compared_points": len(margins),
        "margins": margins,
        "above_everywhere": bool(margins) and min(margins) > 0,
        "dominated": sum(any(ax > bx and ay > by for ax, ay in a) for bx, by in b),
        "points": len(b),
    }
    for column in headline_columns():
        for name in (better, worse):
            values = [r[column] for r in summary if r["method"] == name and column in r]
            if values:
                result[f"best_{column}/{name}"] = max(values)
    return result


def summary_table(summary: list[dict]) -> str:
    """The summary as a fixed-width table: method, setting, n, the CLIP and PSNR means and each metric plug-in's
    headline column, where measured."""
    columns = [c for c in (*TABLE_COLUMNS, *headline_columns()) if any(c in r for r in summary)]
    width = max(8, *(len(r["method"]) for r in summary))
    # a success rate is shown with its 95% interval: 0.7367 [0.68,0.79]
    widths = {c: 20 if any(f"{c}_ci_low" in r for r in summary) else 14 for c in columns}

    def cell(r: dict, c: str) -> str:
        if c not in r:
            return f"{'-':>{widths[c]}}"
        if f"{c}_ci_low" in r:
            return f"{r[c]:.4f} [{r[f'{c}_ci_low']:.2f},{r[f'{c}_ci_high']:.2f}]".rjust(widths[c])
        return f"{r[c]:{widths[c]}.4f}"

    lines = [f"{'method':{width}} {'setting':44} {'n':>5} " + " ".join(f"{c:>{widths[c]}}" for c in columns)]
    for r in summary:
        cells = " ".join(cell(r, c) for c in columns)
        lines.append(f"{r['method']:{width}} {r['setting']:44} {r['n']:5d} {cells}")
    return "\n".join(lines)


def comparison_lines(
    summary: list[dict], better: str, worse: str, references: Sequence[str] = ()
) -> list[str]:
    """In every plane, how often ``better``'s curve beats ``worse``'s (:func:`curve_margin`), and where each
    reference point (except the input) lies against ``worse``."""
    lines = []
    for plane in PLANES:
        margin = curve_margin(summary, better, worse, plane=plane)
        if not margin["points"]:
            continue
        line = (
            f"{plane} plane: {better} beats {worse} on both axes at {margin['dominated']}/"
            f"{margin['points']} of its points"
        )
        if margin["compared_points"]:
            gaps = margin["margins"]
            line += (
                f"; above it at {sum(m > 0 for m in gaps)}/{len(gaps)} where the curves overlap "
                f"(margin min {min(gaps):+.3f}, mean {sum(gaps) / len(gaps):+.3f})"
            )
        lines.append(line)
        for ref in (r for r in references if r != "input"):  # where a perfect edit lies against the baseline
            beaten = curve_margin(summary, ref, worse, plane=plane)["dominated"]
            lines.append(f"  for reference, {ref} beats {worse} on both axes at {beaten}/{margin['points']}")
    return lines
