"""Edit jobs (``ip2p edit``): one image, a folder of images, or a JSONL list of edits, resumable.

:func:`plan_items` turns an input into items ``(image, instruction, output)`` and checks the paths before any model
loads; :func:`edit_batch` edits them with a pipeline, skipping items whose outputs exist (so an interrupted batch
resumes) and recording a failed item as data before going on; :func:`run_edit_job` does both for an ``EditJob``,
split over the processes of ``accelerate launch`` (item i of the plan to process i % N, each process on its own
device) with every process's records merged in plan order, so that N processes write what one writes.

Example::

    report = run_edit_job(EditJob(input="photos/", instruction="make it autumn", output="edited/", model="toy"))
    print(report.summary())   # edited 12, skipped 0, failed 0; outputs in edited/
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ip2p.edit_config import EditConfig, EditJob
from ip2p.edit_settings import SettingsError, merge_settings, read_edit_settings
from ip2p.jsonl import iter_jsonl_objects

if TYPE_CHECKING:
    from ip2p.chain import ChainOptions
    from ip2p.pipeline import EditPipeline


def image_suffixes() -> list[str]:
    """The file extensions of a folder input: those of every format Pillow opens here
    (``PIL.Image.registered_extensions()``), so that a file Pillow cannot decode is refused by name, not skipped."""
    from PIL import Image

    Image.init()
    return sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class BatchError(ValueError):
    """An edit job that cannot start (bad input, output or settings); one line naming the bad value."""


class FlagError(BatchError):
    """A setting's value is out of range or does not exist (``ip2p edit`` exits with status 2, as for usage)."""


@dataclass(frozen=True)
class BatchItem:
    """One edit: ``image`` by ``instruction`` into ``output`` (a PNG; ``_i`` suffixes for several images).

    ``loaded`` is the image already decoded by :func:`ip2p.imaging.load_image` (then it is not read again);
    ``mask`` an image of where the edit may act (see :mod:`ip2p.masking`), or None."""

    image: Path
    instruction: str
    output: Path
    loaded: Any = field(default=None, compare=False, repr=False)
    mask: Path | None = None
    chain: tuple[str, ...] = ()  # instructions applied after ``instruction``, each to the result before


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
    source: str | os.PathLike,
    instruction: str | None,
    output: str | os.PathLike,
    recursive: bool = False,
    mask: str | os.PathLike | None = None,
) -> list[BatchItem]:
    """The items of an input: an image (one item), a folder (every image, by ``instruction``), or a ``.jsonl`` file
    of ``{"image", "instruction"[, "output"][, "mask"]}`` lines (relative paths: images and masks from the file's
    folder, outputs under ``output``). ``mask`` applies to every item that names none of its own. Raises
    :class:`BatchError` before any model is loaded.

    Output names never collide: a folder's image ``photo.jpg`` becomes ``photo.png`` under ``output`` (in the same
    subfolder with ``recursive``), unless another image there has the stem ``photo`` too: then each of them keeps
    its extension in the name (``photo_jpg.png``, ``photo_png.png``). Outputs that still coincide (a JSONL list
    naming one output twice) are refused, naming the inputs. For one image, an ``output`` that is an existing
    folder receives ``<folder>/<stem>.png``.
    """
    src, out = Path(source), Path(output)
    if not src.exists():
        raise BatchError(f"{src}: no such file or folder")
    if mask is not None:
        return [
            replace(item, mask=item.mask or Path(mask))
            for item in plan_items(src, instruction, out, recursive)
        ]
    if src.is_dir():
        if not instruction:
            raise BatchError("a folder input needs an INSTRUCTION")
        return _unique(_folder_items(src, instruction, out, recursive))
    if src.suffix.lower() == ".jsonl":
        items = []
        for n, row in iter_jsonl_objects(src, BatchError):
            if "image" not in row or "instruction" not in row:
                raise BatchError(f"{src}:{n}: each line needs 'image' and 'instruction'")
            image = Path(row["image"])
            image = image if image.is_absolute() else src.parent / image
            target = Path(row["output"]) if row.get("output") else Path(f"{n:06d}_{image.stem}.png")
            mask = Path(row["mask"]) if row.get("mask") else None
            mask = mask if mask is None or mask.is_absolute() else src.parent / mask
            turns = row["instruction"] if isinstance(row["instruction"], list) else [row["instruction"]]
            if not turns or not all(isinstance(t, str) for t in turns):
                raise BatchError(f"{src}:{n}: 'instruction' is a string or a list of strings (a chain)")
            items.append(
                BatchItem(
                    image,
                    turns[0],
                    target if target.is_absolute() else out / target,
                    mask=mask,
                    chain=tuple(turns[1:]),
                )
            )
        if not items:
            raise BatchError(f"{src}: no items")
        return _unique(items)
    if instruction is None:
        raise BatchError("missing INSTRUCTION (give it after the input image)")
    if out.is_dir():  # `-o edited/` for one image: inside the folder, never beside it
        out = out / f"{src.stem}.png"
    return [BatchItem(src, instruction, out)]


def _folder_items(src: Path, instruction: str, out: Path, recursive: bool) -> list[BatchItem]:
    suffixes = set(image_suffixes())
    files = src.rglob("*") if recursive else src.iterdir()
    images = sorted(p for p in files if p.suffix.lower() in suffixes and p.is_file())
    if not images:
        nested = not recursive and any(
            p.suffix.lower() in suffixes for d in src.iterdir() if d.is_dir() for p in d.rglob("*")
        )
        hint = "; its subfolders have some: add --recursive" if nested else " (see --help for the extensions)"
        raise BatchError(f"{src}: no images in this folder{hint}")
    stems: dict[tuple[Path, str], int] = {}
    for p in images:
        key = (p.parent, p.stem.casefold())
        stems[key] = stems.get(key, 0) + 1
    items = []
    for p in images:
        shared = stems[(p.parent, p.stem.casefold())] > 1
        name = f"{p.stem}_{p.suffix[1:].lower()}.png" if shared else f"{p.stem}.png"
        items.append(BatchItem(p, instruction, out / p.parent.relative_to(src) / name))
    return items


def _unique(items: list[BatchItem]) -> list[BatchItem]:
    """Refuse items whose outputs coincide (compared case-insensitively: some file systems are), naming them."""
    seen: dict[str, BatchItem] = {}
    for item in items:
        key = str(item.output).casefold()
        if key in seen:
            raise BatchError(
                f"{seen[key].image} and {item.image} would both be written to {item.output}; give them "
                "different outputs"
            )
        seen[key] = item
    return items


def check_writable(path: Path) -> None:
    """Refuse an output whose nearest existing folder is not writable, or a ``.png`` name that is a folder."""
    probe = path.parent if path.suffix else path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise BatchError(f"{path}: cannot write here ({probe} is not a writable folder)")
    if path.suffix and path.is_dir():
        raise BatchError(f"{path}: is a folder; give a .png file name")


def mask_path(target: Path) -> Path:
    """Where ``--save-mask`` writes an item's mask: ``out.png`` -> ``out_mask.png``."""
    target = target if target.suffix else target.with_suffix(".png")
    return target.with_name(f"{target.stem}_mask.png")


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
    save_mask: bool = False,
    chain: ChainOptions | None = None,
) -> BatchReport:
    """Edit ``items`` with ``pipe`` at ``config`` and write their PNGs (with the edit's metadata in text chunks).

    In batch mode (``batch=True``) an item whose outputs all exist is skipped unless ``overwrite``, and an item that
    fails for any reason (an image that cannot be read, an edit or a write that fails) is recorded as failed, its
    one-line error printed, and the job goes on; with ``batch=False`` (one image) the error is raised. ``warn``
    receives warnings (an image's ignored EXIF, a truncated instruction), each distinct one once; default: stderr.
    Libraries' deprecation notices are not shown. An item's ``mask`` confines its edit; ``save_mask`` writes the
    mask each edit used (given, or automatic with ``config.auto_mask``) to :func:`mask_path`. An item's ``chain``
    edits the result further, turn by turn, under ``chain`` (:class:`ip2p.chain.ChainOptions`: the mode and
    automatic guidance); turn K before the last is written to ``<output>_turnK.png``.
    """
    from tqdm.auto import tqdm

    from ip2p.chain import chain_metadata, edit_turns, turn_path
    from ip2p.imaging import DEFAULT_MAX_PIXELS, ImageError, load_image, save_png
    from ip2p.masking import MaskError

    warn = warn or (lambda text: print(f"ip2p: warning: {text}", file=sys.stderr))
    shown: set[str] = set()
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
            total=config.num_inference_steps * (1 + len(item.chain)),
            desc="steps",
            leave=False,
            disable=batch or not progress or None,
        )
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = item.loaded if item.loaded is not None else load_image(item.image, max_pixels=limit)
                turns = edit_turns(  # one edit, or a chain of them (ip2p.chain)
                    pipe,
                    image,
                    [item.instruction, *item.chain],
                    config,
                    chain,
                    seed=seed,
                    callback=lambda i, n, _, bar=steps: bar.update(1),
                    mask=item.mask,
                )
                result, chained = turns[-1], "chain_mode" in turns[-1].info
                for turn, earlier in enumerate(turns[:-1], 1):
                    save_png(earlier.images[0], turn_path(item.output, turn), chain_metadata(earlier, turn))
                for index, (picture, path) in enumerate(zip(result.images, outputs, strict=True)):
                    meta = chain_metadata(result, len(turns), index) if chained else result.metadata(index)
                    save_png(picture, path, meta)
                if save_mask and result.mask is not None:
                    record["mask"] = str(save_png(result.mask, mask_path(item.output)))
            report.items.append({**record, "status": "ok", "seed": turns[0].seed, **result.info})
        except Exception as exc:
            if not batch:
                raise
            message = str(exc) if isinstance(exc, ImageError | MaskError) else _one_line(item.image, exc)
            report.items.append({**record, "status": "failed", "error": message})
            print(f"ip2p: error: {message}", file=sys.stderr)
        finally:
            steps.close()
            for w in caught:  # the image's and the pipeline's own, not libraries' deprecation notices
                text = str(w.message)
                if not issubclass(w.category, DeprecationWarning | FutureWarning) and text not in shown:
                    shown.add(text)
                    warn(text)
    return report


def _one_line(image: Path, exc: BaseException) -> str:
    """An unexpected failure of one item as one line naming its image."""
    detail = " ".join(str(exc).split()) or "no message"
    return f"{image}: the edit failed ({type(exc).__name__}: {detail[:300]})"


def run_edit_job(
    job: EditJob, overrides: dict[str, Any] | None = None, *, progress: bool = True
) -> BatchReport:
    """Plan ``job``'s items, check its flags, outputs and settings, load the model and edit.

    The edit settings are the paper's defaults < the model's ``edit_settings.json`` < ``overrides`` (``EditConfig``
    fields; ``None`` values are unset). Everything that can be checked without the model is checked first (a bad
    value is a :class:`BatchError`); one image is read before the model loads, and only once.

    Under ``accelerate launch`` each process edits its share of the plan (item i to process i % N) on its own
    device (:func:`ip2p.devices.process_device`) and every process returns the report of the whole job; one image
    is edited by the main process alone.
    """
    from accelerate import PartialState

    from ip2p.devices import process_device
    from ip2p.imaging import load_image
    from ip2p.pipeline import EditPipeline

    check_settings(job, overrides)
    state = PartialState(cpu=job.device == "cpu")
    items = plan_items(job.input, job.instruction, job.output, job.recursive, job.mask)
    items = [replace(item, chain=item.chain or tuple(job.chain)) for item in items]  # --chain: every item's
    chain = _chain_options(job)  # a missing auto_guidance.json fails before the model loads
    batch = len(items) > 1 or is_batch(job.input)
    for item in items:
        check_writable(item.output)
    if job.mask is not None:  # one mask for every item: a bad file fails before the model loads
        from ip2p.masking import MaskError, load_mask

        try:
            load_mask(job.mask)
        except MaskError as exc:
            raise BatchError(str(exc)) from None
    # every item's seed is --seed (or drawn at random), never a generator run through the items before it, so
    # an item's output is the same whichever process edits it
    mine = items[state.process_index :: state.num_processes]
    if not batch and mine:  # one image: read it before paying for the model, and hand it over decoded
        mine = [replace(mine[0], loaded=load_image(mine[0].image, max_pixels=job.max_pixels))]
    report = BatchReport(model="")
    if mine:
        device = process_device(job.device, cpu=job.device == "cpu")
        pipe = EditPipeline.from_pretrained(
            job.model, device=device, dtype=job.dtype, config=job.config, options=job
        )
        config = pipe.config_for(**(overrides or {}))
        report = edit_batch(
            pipe,
            mine,
            config,
            seed=job.seed,
            max_pixels=job.max_pixels,
            overwrite=job.overwrite,
            batch=batch,
            progress=progress and state.is_main_process,
            save_mask=job.save_mask,
            chain=chain,
        )
    if state.num_processes == 1 or not batch:  # one image: the main process edits it alone
        return report
    return merge_reports(report, state.process_index, state.num_processes)


def _chain_options(job: EditJob) -> ChainOptions:
    """The job's chaining mode and, for ``--guidance auto``, the model's guidance predictor."""
    from ip2p.chain import ChainOptions

    guidance = None
    if job.guidance == "auto":
        from ip2p.auto_guidance import GuidanceError, GuidancePredictor

        try:
            guidance = GuidancePredictor.from_pretrained(job.model)
        except GuidanceError as exc:
            raise BatchError(str(exc)) from None
    return ChainOptions(mode=job.chain_mode, threshold=job.paste_threshold, guidance=guidance)


def merge_reports(report: BatchReport, process: int, processes: int) -> BatchReport:
    """Every process's records of a job split over ``processes`` (item i of the plan to process i % processes),
    gathered into one report in plan order, the same on every process; a collective call, made by every process."""
    from accelerate.utils import gather_object

    indexed = [(process + k * processes, record) for k, record in enumerate(report.items)]
    parts = gather_object([(report.model, indexed)])
    merged = BatchReport(model=next((model for model, _ in parts if model), report.model))
    merged.items = [
        record for _, record in sorted((pair for _, rows in parts for pair in rows), key=lambda pair: pair[0])
    ]
    return merged


def check_settings(job: EditJob, overrides: dict[str, Any] | None = None) -> None:
    """Every value of ``job`` and of the edit's settings (the model's < ``overrides``) in range, and the device
    present on this machine (``cuda`` without CUDA, ``cuda:3`` on a one-GPU machine); :class:`FlagError` if not.
    Loads no model (reads its ``edit_settings.json`` only)."""
    try:
        job.validate()
        settings = merge_settings(read_edit_settings(job.model), overrides)
        settings.validate()
        given = [
            k for k in ("text_guidance_scale", "image_guidance_scale") if (overrides or {}).get(k) is not None
        ]
        if job.guidance == "auto" and given:
            raise ValueError(
                "--guidance auto chooses the guidance scales; drop --text-guidance/--image-guidance"
            )
        if (job.chain or job.chain_mode != "plain" or job.guidance == "auto") and settings.num_images != 1:
            raise ValueError(
                "--chain, --chain-mode and --guidance auto edit one image an input: drop --num-images"
            )
    except (ValueError, TypeError, OverflowError) as exc:
        if isinstance(exc, BatchError | SettingsError):  # a file's problem, not a flag's
            raise
        raise FlagError(str(exc)) from None
    from ip2p.pipeline_options import AcceleratorError, LoraError, check_accelerator, lora_location

    try:
        for path, _ in job.lora_specs():
            lora_location(path)  # exists, safetensors
        check_accelerator(job, job.device)
    except (AcceleratorError, LoraError) as exc:
        raise FlagError(str(exc)) from None
    if job.device == "auto":
        return
    from ip2p.devices import pick_device

    try:
        device = pick_device(job.device)
    except (RuntimeError, ValueError) as exc:
        raise FlagError(f"--device {job.device}: {exc}") from None
    if device.type == "cuda" and device.index is not None:
        import torch

        if device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise FlagError(f"--device {job.device}: this machine has {count} CUDA device(s)")
