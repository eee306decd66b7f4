"""The `ip2p` command line. Thin: each subcommand parses flags, builds a config and makes one library call."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ip2p import __version__

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# -- edit ----------------------------------------------------------------------------------------------------
def add_model_flags(p: argparse.ArgumentParser, default_model: str) -> None:
    p.add_argument(
        "--model",
        default=default_model,
        help="editing model: a diffusers folder, a .safetensors/.ckpt file in the original format, a hub "
        "id, 'toy' (the bundled toy-world editor) or 'tiny' (a tiny random model; default: %(default)s)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="for a single-file checkpoint: a diffusers folder (or hub id) holding the component configs",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: %(default)s)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="weights and compute precision; auto = fp16 on GPU, fp32 on CPU (default: %(default)s)",
    )


def add_edit_flags(p: argparse.ArgumentParser) -> None:
    from ip2p.imaging import DEFAULT_MAX_PIXELS
    from ip2p.sampling import SCHEDULERS

    p.add_argument("--steps", type=int, default=100, help="sampler steps (paper: %(default)s)")
    p.add_argument(
        "--text-guidance",
        "--cfg-text",
        dest="text_guidance",
        type=float,
        default=7.5,
        help="text guidance scale s_T: higher follows the instruction more (paper: %(default)s)",
    )
    p.add_argument(
        "--image-guidance",
        "--cfg-image",
        dest="image_guidance",
        type=float,
        default=1.5,
        help="image guidance scale s_I: higher stays closer to the input (paper: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="random seed (default: drawn at random and recorded)"
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="long side of the image the model edits (default: %(default)s; the toy model uses 64)",
    )
    p.add_argument(
        "--resize-mode",
        choices=["fit", "pad", "crop"],
        default="fit",
        help="fit: the original's policy (sides to multiples of 64, centre fit); pad/crop: keep the exact "
        "aspect ratio, padding or cropping to multiples of 8 (default: %(default)s)",
    )
    p.add_argument("--restore-size", action="store_true", help="resize the result back to the input's size")
    p.add_argument(
        "--scheduler",
        choices=sorted(SCHEDULERS),
        default=None,
        help="sampler (default: the model's own; the released model's is euler_ancestral)",
    )
    p.add_argument("--num-images", type=int, default=1, help="edits per input, from consecutive noise draws")
    p.add_argument(
        "--negative-prompt", default=None, help="text to steer away from (replaces the empty null text)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse inputs with more pixels than this (decompression-bomb guard; default: %(default)s)",
    )


def _edit_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.models import DEFAULT_MODEL

    p = sub.add_parser(
        "edit",
        help="edit an image (or a folder, or a JSONL list) by an instruction",
        description="Edit images by written instructions with an InstructPix2Pix model. INPUT is an image, a "
        "folder of images (all edited with INSTRUCTION), or a .jsonl file of "
        '{"image": ..., "instruction": ...[, "output": ...]} lines. Outputs are PNGs whose text chunks '
        "record the instruction, seed, scales, steps and model. Existing outputs are skipped in batch "
        "mode unless --overwrite, so an interrupted batch resumes.",
    )
    p.add_argument("input", help="an image file, a folder of images, or a .jsonl file")
    p.add_argument(
        "instruction",
        nargs="?",
        default=None,
        help="the edit, e.g. 'make the circle green' (not needed for .jsonl input)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output PNG for one image; an output folder for a folder or .jsonl input",
    )
    add_model_flags(p, DEFAULT_MODEL)
    add_edit_flags(p)
    p.add_argument(
        "--overwrite", action="store_true", help="batch mode: redo items whose output already exists"
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")
    p.set_defaults(func=cmd_edit)


def _plan_batch(args: argparse.Namespace) -> list[dict]:
    """Items {image, instruction, output} for the input kind; validation of paths before any model is loaded."""
    src, out = Path(args.input), Path(args.output)
    if not src.exists():
        raise CLIError(f"{src}: no such file or folder")
    if src.is_dir():
        if not args.instruction:
            raise CLIError("a folder input needs an INSTRUCTION")
        images = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise CLIError(f"{src}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return [
            {"image": p, "instruction": args.instruction, "output": out / f"{p.stem}.png"} for p in images
        ]
    if src.suffix.lower() == ".jsonl":
        items = []
        for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CLIError(f"{src}:{n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or "image" not in row or "instruction" not in row:
                raise CLIError(f"{src}:{n}: each line needs 'image' and 'instruction'")
            image = Path(row["image"])
            image = image if image.is_absolute() else src.parent / image
            target = Path(row["output"]) if row.get("output") else Path(f"{n:06d}_{image.stem}.png")
            items.append(
                {
                    "image": image,
                    "instruction": row["instruction"],
                    "output": target if target.is_absolute() else out / target,
                }
            )
        if not items:
            raise CLIError(f"{src}: no items")
        return items
    if args.instruction is None:
        raise CLIError("missing INSTRUCTION (give it after the input image)")
    return [{"image": src, "instruction": args.instruction, "output": out}]


def _check_writable(path: Path) -> None:
    parent = path.parent if path.suffix else path
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise CLIError(f"{path}: cannot write here ({probe} is not a writable folder)")
    if path.suffix and path.is_dir():
        raise CLIError(f"{path}: is a folder; give a .png file name")


def _output_paths(target: Path, num_images: int) -> list[Path]:
    target = target if target.suffix else target.with_suffix(".png")
    if num_images == 1:
        return [target]
    return [target.with_name(f"{target.stem}_{i}{target.suffix}") for i in range(num_images)]


def cmd_edit(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ip2p.imaging import ImageError, load_image, save_png
    from ip2p.pipeline import EditConfig, EditPipeline

    items = _plan_batch(args)
    batch = len(items) > 1 or Path(args.input).is_dir() or Path(args.input).suffix.lower() == ".jsonl"
    for item in items:
        _check_writable(Path(item["output"]))
    config = EditConfig(
        num_inference_steps=args.steps,
        text_guidance_scale=args.text_guidance,
        image_guidance_scale=args.image_guidance,
        scheduler=args.scheduler,
        num_images=args.num_images,
        negative_prompt=args.negative_prompt,
        resolution=args.resolution,
        resize_mode=args.resize_mode,
        restore_size=args.restore_size,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    if not batch:  # one image: read it before paying for the model
        load_image(items[0]["image"], max_pixels=args.max_pixels)
    pipe = EditPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype, config=args.config)

    summary: list[dict] = []
    failures = 0
    bar = tqdm(items, desc="editing", unit="image", disable=not batch or None)
    for item in bar:
        outputs = _output_paths(Path(item["output"]), args.num_images)
        record = {
            "image": str(item["image"]),
            "instruction": item["instruction"],
            "outputs": [str(p) for p in outputs],
        }
        if batch and not args.overwrite and all(p.exists() for p in outputs):
            summary.append({**record, "status": "skipped (exists)"})
            continue
        steps_bar = tqdm(total=args.steps, desc="steps", leave=False, disable=batch or None)
        try:
            image = load_image(item["image"], max_pixels=args.max_pixels)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = pipe(
                    image,
                    item["instruction"],
                    config,
                    seed=args.seed,
                    callback=lambda i, n, _, bar=steps_bar: bar.update(1),
                )
            for w in caught:
                print(f"ip2p: warning: {w.message}", file=sys.stderr)
            for index, (picture, path) in enumerate(zip(result.images, outputs, strict=True)):
                save_png(picture, path, result.metadata(index))
            summary.append({**record, "status": "ok", "seed": result.seed, **result.info})
        except ImageError as exc:
            if not batch:
                raise CLIError(str(exc)) from exc
            failures += 1
            summary.append({**record, "status": "failed", "error": str(exc)})
            print(f"ip2p: error: {exc}", file=sys.stderr)
        finally:
            steps_bar.close()
    if args.json:
        print(json.dumps({"model": pipe.components.name, "items": summary, "failed": failures}, indent=2))
    elif not batch:
        print(f"wrote {', '.join(summary[0]['outputs'])} (seed {summary[0].get('seed')})")
    else:
        done = sum(s["status"] == "ok" for s in summary)
        print(
            f"edited {done}, skipped {len(summary) - done - failures}, failed {failures}; outputs in {args.output}"
        )
    return 1 if failures else 0


# -- demo ----------------------------------------------------------------------------------------------------
def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="edit a toy-world scene with the bundled editor and write before/after PNGs",
        description="The main job of a fresh checkout: render a toy scene, edit it by an instruction "
        "and write input, output and a side-by-side picture.",
    )
    p.add_argument("-o", "--output", default="outputs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--instruction", default=None, help="the edit (default: one chosen for the scene)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the scene and of the edit (default: %(default)s)"
    )
    p.add_argument(
        "--model",
        default="auto",
        help="'auto' (the bundled toy editor, or a tiny random model where it is missing), 'toy', "
        "'tiny' or any model path (default: %(default)s)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's preset)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ip2p.demo import run_demo

    report = run_demo(
        Path(args.output), model=args.model, instruction=args.instruction, seed=args.seed, steps=args.steps
    )
    for line in report:
        print(line)
    return 0


# -- entry point ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ip2p",
        description="InstructPix2Pix: edit images by written instructions, build instruction-edit datasets, "
        "train editors and measure them.",
    )
    parser.add_argument("--version", action="version", version=f"ip2p {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _edit_parser(sub)
    _demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    from ip2p.imaging import ImageError
    from ip2p.models import ModelLoadError

    try:
        return int(args.func(args) or 0)
    except (CLIError, ImageError, ModelLoadError) as exc:
        print(f"ip2p: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ip2p: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Library chatter (deprecations, fallbacks) is not for the user of a command line tool."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


if __name__ == "__main__":
    sys.exit(main())
