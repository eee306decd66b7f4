"""Edit jobs (``ip2p edit``): one image, a folder of images, or a JSONL list of edits, resumable.

:func:`plan_items` turns an input into items ``(image, instruction, output)`` and checks the paths before any model
loads; :func:`edit_batch` edits them with a pipeline, skipping items whose outputs exist (so an interrupted batch
resumes) and recording a failed item as data before going on; :func:`run_edit_job` does both for an ``EditJob``.

Example::

    report = run_edit_job(EditJob(input="photos/", instruction="make it autumn", output="edited/", model="toy"))
    print(report.summary())   # edited 12, skipped 0, failed 0; outputs in edited/
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ip2p.edit_config import EditConfig, EditJob
from ip2p.edit_settings import merge_settings, read_edit_settings
from ip2p.jsonl import iter_jsonl_objects

if TYPE_CHECKING:
    from ip2p.pipeline import EditPipeline

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class BatchError(ValueError):
    """An edit job that cannot start (bad input, output or settings); one line naming the bad value."""


@dataclass(frozen=True)
class BatchItem:
    """One edit: ``image`` by ``instruction`` into ``output`` (a PNG; ``_i`` suffixes for several images)."""

    image: Path
    instruction: str
    output: Path


@dataclass
class BatchReport:
    """What a job did: one record per item (``status``: ok, skipped (exists) or failed, with the error)."""

    model: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.items)

    @property
    def failed(self) -> int:
        return self.count("failed")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "items": self.items, "failed": self.failed}

    def summary(self, output: str | os.PathLike) -> str:
        done, failed = self.count("ok"), self.failed
        return (
            f"edited {done}, skipped {len(self.items) - done - failed}, failed {failed}; outputs in {output}"
        )


def is_batch(source: str | os.PathLike) -> bool:
    """A folder or a ``.jsonl`` list (several items, resumable) rather than one image."""
    path = Path(source)
    return path.is_dir() or path.suffix.lower() == ".jsonl"


def plan_items(
    source: str | os.PathLike, instruction: str | None, output: str | os.PathLike
) -> list[BatchItem]:
    """The items of an input: an image (one item), a folder (every image, by ``instruction``), or a ``.jsonl`` file
    of ``{"image", "instruction"[, "output"]}`` lines (relative paths: images from the file's folder, outputs under
    ``output``). Raises :class:`BatchError` before any model is loaded."""
    src, out = Path(source), Path(output)
    if not src.exists():
        raise BatchError(f"{src}: no such file or folder")
    if src.is_dir():
        if not instruction:
            raise BatchError("a folder input needs an INSTRUCTION")
        images = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise BatchError(f"{src}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return [BatchItem(p, instruction, out / f"{p.stem}.png") for p in images]
    if src.suffix.lower() == ".jsonl":
        items = []
        for n, row in iter_jsonl_objects(src, BatchError):
            if "image" not in row or "instruction" not in row:
                raise BatchError(f"{src}:{n}: each line needs 'image' and 'instruction'")
            image = Path(row["image"])
            image = image if image.is_absolute() else src.parent / image
            target = Path(row["output"]) if row.get("output") else Path(f"{n:06d}_{image.stem}.png")
            items.append(
                BatchItem(image, row["instruction"], target if target.is_absolute() else out / target)
            )
        if not items:
            raise BatchError(f"{src}: no items")
        return items
    if instruction is None:
        raise BatchError("missing INSTRUCTION (give it after the input image)")
    return [BatchItem(src, instruction, out)]


def check_writable(path: Path) -> None:
    """Refuse an output whose nearest existing folder is not writable, or a ``.png`` name that is a folder."""
    probe = path.parent if path.suffix else path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise BatchError(f"{path}: cannot write here ({probe} is not a writable folder)")
    if path.suffix and path.is_dir():
        raise BatchError(f"{path}: is a folder; give a .png file name")


def output_paths(target: Path, num_images: int) -> list[Path]:
    """``out.png`` for one image; ``out_0.png``, ``out_1.png``, ... for several."""
    target = target if target.suffix else target.with_suffix(".png")
    if num_images == 1:
        return [target]
    return [target.with_name(f"{target.stem}_{i}{target.suffix}") for i in range(num_images)]


def edit_batch(
    pipe: EditPipeline,
    items: list[BatchItem],
    config: EditConfig,
    *,
    seed: int | None = None,
    max_pixels: int | None = None,
    overwrite: bool = False,
    batch: bool = True,
    progress: bool = True,
    warn: Callable[[str], None] | None = None,
) -> BatchReport:
    """Edit ``items`` with ``pipe`` at ``config`` and write their PNGs (with the edit's metadata in text chunks).

    In batch mode (``batch=True``) an item whose outputs all exist is skipped unless ``overwrite``, and an item
    whose image cannot be read is recorded as failed and the job goes on; with ``batch=False`` (one image) that
    error is raised. ``warn`` receives the pipeline's warnings (e.g. a truncated instruction); default: stderr.
    """
    from tqdm.auto import tqdm

    from ip2p.imaging import DEFAULT_MAX_PIXELS, ImageError, load_image, save_png

    warn = warn or (lambda text: print(f"ip2p: warning: {text}", file=sys.stderr))
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    report = BatchReport(model=pipe.components.name)
    bar = tqdm(items, desc="editing", unit="image", disable=not (batch and progress) or None)
    for item in bar:
        outputs = output_paths(item.output, config.num_images)
        record: dict[str, Any] = {
            "image": str(item.image),
            "instruction": item.instruction,
            "outputs": [str(p) for p in outputs],
        }
        if batch and not overwrite and all(p.exists() for p in outputs):
            report.items.append({**record, "status": "skipped (exists)"})
            continue
        steps = tqdm(
            total=config.num_inference_steps, desc="steps", leave=False, disable=batch or not progress or None
        )
        try:
            image = load_image(item.image, max_pixels=limit)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = pipe(
                    image,
                    item.instruction,
                    config,
                    seed=seed,
                    callback=lambda i, n, _, bar=steps: bar.update(1),
                )
            for w in caught:  # the pipeline's own (e.g. a truncated instruction), not libraries' deprecations
                if not issubclass(w.category, DeprecationWarning | FutureWarning):
                    warn(str(w.message))
            for index, (picture, path) in enumerate(zip(result.images, outputs, strict=True)):
                save_png(picture, path, result.metadata(index))
            report.items.append({**record, "status": "ok", "seed": result.seed, **result.info})
        except ImageError as exc:
            if not batch:
                raise
            report.items.append({**record, "status": "failed", "error": str(exc)})
            print(f"ip2p: error: {exc}", file=sys.stderr)
        finally:
            steps.close()
    return report


def run_edit_job(
    job: EditJob, overrides: dict[str, Any] | None = None, *, progress: bool = True
) -> BatchReport:
    """Plan ``job``'s items, check its outputs and settings, load the model and edit.

    The edit settings are the paper's defaults < the model's ``edit_settings.json`` < ``overrides`` (``EditConfig``
    fields; ``None`` values are unset). Everything that can be checked without the model is checked first.
    """
    from ip2p.imaging import load_image
    from ip2p.pipeline import EditPipeline

    items = plan_items(job.input, job.instruction, job.output)
    batch = len(items) > 1 or is_batch(job.input)
    for item in items:
        check_writable(item.output)
    try:
        merge_settings(read_edit_settings(job.model), overrides).validate()
    except (ValueError, TypeError) as exc:
        raise BatchError(str(exc)) from exc
    if not batch:  # one image: read it before paying for the model
        load_image(items[0].image, max_pixels=job.max_pixels)
    pipe = EditPipeline.from_pretrained(job.model, device=job.device, dtype=job.dtype, config=job.config)
    config = pipe.config_for(**(overrides or {}))
    return edit_batch(
        pipe,
        items,
        config,
        seed=job.seed,
        max_pixels=job.max_pixels,
        overwrite=job.overwrite,
        batch=batch,
        progress=progress,
    )
