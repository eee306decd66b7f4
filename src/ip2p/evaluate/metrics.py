"""Metrics of ``ip2p evaluate`` (paper section 4): CLIP and pixel metrics built in, plug-in metrics beside them.

Built in, per item: ``clip_image`` (CLIP image similarity of input and edit), ``clip_direction`` (CLIP directional
similarity; needs both captions), ``clip_text`` (edit vs output caption) and, with a target image, ``l1``, ``l2``
(mean squared error), ``psnr`` (dB) in [0, 1] pixels and ``clip_target``. Any metric registered in
``ip2p.registry.METRICS`` (a :class:`~ip2p.registry.Metric`: the toy world's oracle, or your own ground truth) is
measured beside them on every batch; its columns join the records, the summary (also per edit type where it
asks) and, with a plane, the plot and ``curve_margin``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ip2p.evaluate.items import EvalItem, EvaluationError
from ip2p.registry import METRICS, Metric, RegistryError

BUILTIN_COLUMNS = ("clip_direction", "clip_image", "clip_text", "clip_target", "l1", "l2", "psnr")
BUILTIN_BY_TYPE = (
    "clip_direction",
    "clip_image",
)  # also averaged per edit type, for the planes within one type
CLIP_PLANE = ("clip_direction", "clip_image", "CLIP text-image direction similarity", "CLIP image similarity")


def selected_metrics(names: Sequence[str] | None = None) -> dict[str, Metric]:
    """The plug-in metrics of a run: those named (each must be registered), or every registered one for None."""
    if names is None:
        return dict(METRICS.items())
    try:
        return {name: METRICS.get(name) for name in names}
    except RegistryError as exc:
        raise EvaluationError(str(exc)) from None


def metric_columns(metrics: Mapping[str, Metric] | None = None) -> tuple[str, ...]:
    """Every column the summary averages: the built-in ones, then each metric's (default: every registered)."""
    chosen = selected_metrics() if metrics is None else metrics
    return tuple(dict.fromkeys([*BUILTIN_COLUMNS, *(c for m in chosen.values() for c in m.columns)]))


def type_columns(metrics: Mapping[str, Metric] | None = None) -> tuple[str, ...]:
    """The columns also averaged per edit type (``<column>/<type>``)."""
    chosen = selected_metrics() if metrics is None else metrics
    return tuple(dict.fromkeys([*BUILTIN_BY_TYPE, *(c for m in chosen.values() for c in m.by_type)]))


class _Planes(Mapping):
    """``name -> (x column, y column, x label, y label)``: the paper's CLIP plane and every registered metric's."""

    def _planes(self) -> dict[str, tuple[str, str, str, str]]:
        return {"clip": CLIP_PLANE, **{name: m.plane for name, m in METRICS.items() if m.plane}}

    def __getitem__(self, name: str) -> tuple[str, str, str, str]:
        return self._planes()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._planes())

    def __len__(self) -> int:
        return len(self._planes())


PLANES: Mapping[str, tuple[str, str, str, str]] = _Planes()
"""The planes a method's curve is drawn in: the paper's CLIP plane, and the plane of each metric plug-in that has
one (the toy world's ``oracle``: the share of edits right (x) against the share that keeps the rest (y))."""


def to_unit_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> (B, 3, H, W) float in [0, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


def pixel_metrics(edited: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """L1, L2 (mean squared error) and PSNR (dB) per image of (B, 3, H, W) tensors in [0, 1].

    Example:
        >>> a = torch.zeros(1, 3, 2, 2); b = torch.full((1, 3, 2, 2), 0.1)
        >>> {k: round(float(v[0]), 4) for k, v in pixel_metrics(a, b).items()}
        {'l1': 0.1, 'l2': 0.01, 'psnr': 20.0}
    """
    diff = edited.float() - target.float()
    l1 = diff.abs().flatten(1).mean(1)
    l2 = diff.pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / l2.clamp_min(1e-10))
    return {"l1": l1, "l2": l2, "psnr": psnr}


def measure_batch(
    scorer,
    items: list[EvalItem],
    inputs: list[Image.Image],
    edited: list[Image.Image],
    metrics: Mapping[str, Metric] | None = None,
) -> list[dict]:
    """The metrics of one batch of edits (see the module docstring), one dict per item; ``metrics``: the plug-in
    metrics to measure too (default: every registered one)."""
    from ip2p.pairs.clip_score import directional_similarity

    x0, x1 = (
        to_unit_tensor(inputs),
        to_unit_tensor([e.resize(i.size) for e, i in zip(edited, inputs, strict=True)]),
    )
    rows: list[dict] = [{} for _ in items]
    if scorer is not None:
        e0, e1 = scorer.encode_images(x0), scorer.encode_images(x1)
        sim_image = torch.nn.functional.cosine_similarity(e0, e1)
        with_captions = [i for i, it in enumerate(items) if it.input_caption and it.output_caption]
        if with_captions:
            t0 = scorer.encode_texts([items[i].input_caption for i in with_captions])
            t1 = scorer.encode_texts([items[i].output_caption for i in with_captions])
            direction = directional_similarity(e0[with_captions], e1[with_captions], t0, t1)
            text_sim = torch.nn.functional.cosine_similarity(e1[with_captions], t1)
            for j, i in enumerate(with_captions):
                rows[i]["clip_direction"] = float(direction[j])
                rows[i]["clip_text"] = float(text_sim[j])
        for i in range(len(items)):
            rows[i]["clip_image"] = float(sim_image[i])
    with_target = [i for i, it in enumerate(items) if it.target is not None]
    if with_target:
        targets = to_unit_tensor([items[i].target.resize(inputs[i].size) for i in with_target])
        px = pixel_metrics(x1[with_target], targets)
        e_t = scorer.encode_images(targets) if scorer is not None else None
        for j, i in enumerate(with_target):
            rows[i].update({k: float(v[j]) for k, v in px.items()})
            if e_t is not None:
                rows[i]["clip_target"] = float(
                    torch.nn.functional.cosine_similarity(e1[i : i + 1], e_t[j : j + 1])
                )
    for name, metric in (selected_metrics() if metrics is None else metrics).items():
        values = metric.measure(items, inputs, edited)
        if len(values) != len(items):
            raise EvaluationError(f"metric {name!r} returned {len(values)} rows for {len(items)} items")
        for row, extra in zip(rows, values, strict=True):
            row.update({k: float(v) for k, v in extra.items() if v is not None})
    return rows
