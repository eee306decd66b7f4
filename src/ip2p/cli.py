"""The `ip2p` command line. Thin: each subcommand parses flags, builds a config and makes one library call."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

# Before torch loads OpenMP: with OpenMP's default spin-waiting, a 2-thread job beside any other busy process runs
# many times slower (measured here: 15 s instead of 1 s a training step next to one other job); waiting passively
# costs nothing on an idle machine. A value the user sets wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ip2p import __version__  # noqa: E402

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
    p.add_argument(
        "--guidance-rescale",
        type=float,
        default=0.0,
        help="rescale the guided prediction towards the conditional one's std, 0-1 (Lin et al. 2024; for "
        "zero-terminal-SNR models such as the toy one; default: %(default)s, the paper's)",
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
        from ip2p.jsonl import iter_jsonl_objects

        for n, row in iter_jsonl_objects(src, CLIError):
            if "image" not in row or "instruction" not in row:
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
        guidance_rescale=args.guidance_rescale,
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


# -- train ---------------------------------------------------------------------------------------------------
def _train_parser(sub: argparse._SubParsersAction) -> None:
    from dataclasses import MISSING

    from ip2p.train import PRESETS, config_fields

    p = sub.add_parser(
        "train",
        help="fine-tune an editing model from a text-to-image model (paper 3.2)",
        description="Train an InstructPix2Pix editor. Defaults are the paper's; --preset toy sets the toy world's. "
        "Runs on several GPUs or nodes through `accelerate launch -m ip2p.cli train ...`. Running the "
        "same command again resumes from the newest checkpoint in --output-dir.",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="a named set of defaults; flags override it (default: %(default)s)",
    )
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        text = f.metadata["help"]
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name == "data":
            p.add_argument(flag, dest=f.name, nargs="+", default=None, help=text)
        else:
            kind = {"int": int, "float": float, "float | None": float}.get(str(f.type), str)
            p.add_argument(
                flag,
                dest=f.name,
                type=kind,
                default=None,
                help=f"{text} (default: {default})" if default is not None else text,
            )
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ip2p.datasets import DatasetError
    from ip2p.train import apply_preset, config_fields, train

    overrides = {f.name: getattr(args, f.name) for f in config_fields() if getattr(args, f.name) is not None}
    try:
        config = apply_preset(args.preset, overrides)
        config.validate()
        folder = train(config)
    except (ValueError, DatasetError) as exc:
        raise CLIError(str(exc)) from exc
    print(f"trained model written to {folder}")
    return 0


# -- serve ---------------------------------------------------------------------------------------------------
def _serve_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.imaging import DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "serve",
        help="the web app: edit images by instruction in the browser, with an HTTP API",
        description="Serve the interactive editor (Gradio): upload an image, type an instruction, tune the "
        "guidance scales, chain edits. Programs can call the /edit endpoint (see the README). Listens on "
        "127.0.0.1 only unless --host says otherwise. --model auto (the default) serves the bundled toy "
        "editor, or a tiny random model, labelled as such, where it is missing.",
    )
    add_model_flags(p, "auto")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 exposes the app to the network (default: %(default)s)",
    )
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    p.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (needs internet)"
    )
    p.add_argument(
        "--concurrency", type=int, default=1, help="edits that run at the same time (default: %(default)s)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=16,
        help="requests that may wait; more get a 'queue is full' answer (default: %(default)s)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=10.0,
        help="largest upload accepted, in MB (default: %(default)s)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse uploaded images with more pixels than this (default: %(default)s)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ip2p.app import ServeConfig, serve

    config = ServeConfig(
        model=args.model,
        config=args.config,
        device=args.device,
        dtype=args.dtype,
        host=args.host,
        port=args.port,
        share=args.share,
        concurrency=args.concurrency,
        max_queue=args.max_queue,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    serve(config)
    return 0


# -- gen-text / finetune-text (stage 1) ----------------------------------------------------------------------
def _gen_text_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gen-text",
        help="write (caption, instruction, edited caption) triplets with a language model",
        description="Stage 1 of dataset synthesis (paper 3.1.1): for each caption, a language model writes an "
        "edit instruction and the edited caption. Completions that do not parse or change nothing are retried; "
        "duplicates, out-of-bounds lengths and blocklisted words are filtered, each counted in "
        "OUTPUT.report.json. Rerunning with the same OUTPUT resumes.",
    )
    p.add_argument(
        "captions",
        help="captions: a .txt (one a line), .jsonl, .csv or .parquet file, a datasets name (needs the hub), "
        "or toy[:N] (N held-out toy-world captions)",
    )
    p.add_argument(
        "-o", "--output", required=True, help="output .jsonl of {input, edit, output, provenance} lines"
    )
    p.add_argument(
        "--column",
        default=None,
        help="caption column of a table (default: caption, text, TEXT, input or prompt)",
    )
    p.add_argument("--split", default="train", help="split of a datasets name (default: %(default)s)")
    p.add_argument(
        "--backend",
        default="hf",
        help="hf (a transformers causal LM), openai (an OpenAI-compatible chat endpoint) or fake (a "
        "deterministic stand-in for dry runs) (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="hf: a folder saved by finetune-text (e.g. runs/toy-lm), a hub id or 'toy' (the bundled toy language "
        "model); openai: the model name",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the caption order and of sampling (default: %(default)s)"
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="stop once OUTPUT holds this many triplets (default: all captions)",
    )
    p.add_argument(
        "--no-shuffle", action="store_true", help="visit captions in file order, not in a seeded permutation"
    )
    p.add_argument(
        "--num-partitions", type=int, default=1, help="split the captions into this many parts (default: 1)"
    )
    p.add_argument("--partition", type=int, default=0, help="which part this run writes, from 0 (default: 0)")
    p.add_argument(
        "--batch-size", type=int, default=16, help="captions per model call (default: %(default)s)"
    )
    p.add_argument("--overwrite", action="store_true", help="start OUTPUT over instead of resuming it")
    s = p.add_argument_group("sampling (paper defaults)")
    s.add_argument("--temperature", type=float, default=0.7, help="(default: %(default)s)")
    s.add_argument(
        "--caption-temperature",
        type=float,
        default=None,
        help="hf backend: the edited caption's temperature after the instruction; 0: greedy "
        "(default: --temperature throughout, as the paper)",
    )
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: %(default)s)")
    s.add_argument(
        "--frequency-penalty",
        type=float,
        default=0.1,
        help="logit -= this x times the token was already generated (default: %(default)s)",
    )
    s.add_argument(
        "--presence-penalty",
        type=float,
        default=0.0,
        help="logit -= this once a token was generated (default: %(default)s)",
    )
    s.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        help="completion length limit in tokens (default: %(default)s)",
    )
    s.add_argument(
        "--num-retries",
        type=int,
        default=3,
        help="further tries on unparsable or no-op output (default: %(default)s)",
    )
    f = p.add_argument_group("filters")
    f.add_argument(
        "--min-chars",
        type=int,
        default=2,
        help="shortest caption, instruction or edited caption (default: %(default)s)",
    )
    f.add_argument(
        "--max-chars",
        type=int,
        default=1000,
        help="longest caption, instruction or edited caption (default: %(default)s)",
    )
    f.add_argument(
        "--blocklist",
        default=None,
        help="file of words or phrases (one a line) that drop a caption or triplet",
    )
    h = p.add_argument_group("hf backend")
    h.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: %(default)s)")
    h.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="weights precision; auto = fp16 on GPU, fp32 on CPU",
    )
    o = p.add_argument_group("openai backend")
    o.add_argument(
        "--base-url",
        default="https://api.openai.com/v1",
        help="endpoint root; requests go to BASE/chat/completions (default: %(default)s)",
    )
    o.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the key; unset: no key sent (default: %(default)s)",
    )
    o.add_argument(
        "--seeds",
        default=None,
        help="seed triplets (JSONL of input/edit/output, or 'toy') for the few-shot prompt (default: the paper's human-written file where present, else toy)",
    )
    o.add_argument(
        "--num-shots", type=int, default=8, help="seed triplets shown as examples (default: %(default)s)"
    )
    o.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: %(default)s)")
    o.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default: %(default)s)")
    o.add_argument(
        "--max-request-retries",
        type=int,
        default=6,
        help="retries on 429/5xx/timeouts, with exponential backoff (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=cmd_gen_text)


def _make_text_backend(args: argparse.Namespace):
    from ip2p.text.backends import FakeGenerator, SamplingConfig

    sampling = SamplingConfig(
        temperature=args.temperature,
        top_p=args.top_p,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        max_new_tokens=args.max_new_tokens,
        caption_temperature=args.caption_temperature,
    )
    sampling.validate()
    if args.backend == "fake":
        return FakeGenerator()
    if not args.model:
        raise CLIError(f"the {args.backend} backend needs --model")
    if args.backend == "openai":
        from ip2p.text.openai_backend import OpenAIConfig, OpenAIGenerator
        from ip2p.text.sources import read_seed_triplets

        config = OpenAIConfig(
            base_url=args.base_url,
            model=args.model,
            api_key_env=args.api_key_env,
            num_shots=args.num_shots,
            max_concurrency=args.concurrency,
            timeout=args.timeout,
            max_retries=args.max_request_retries,
            sampling=sampling,
        )
        return OpenAIGenerator(config, read_seed_triplets(args.seeds) if args.num_shots else [])
    from ip2p.text.hf import HFGenerator

    return HFGenerator.from_pretrained(
        args.model, sampling=sampling, batch_size=args.batch_size, device=args.device, dtype=args.dtype
    )


def cmd_gen_text(args: argparse.Namespace) -> int:
    from ip2p.text.backends import BackendError
    from ip2p.text.filters import FilterConfig
    from ip2p.text.generate import GenerateConfig, generate_triplets
    from ip2p.text.sources import read_captions

    if args.backend not in ("hf", "openai", "fake"):
        raise CLIError(f"unknown backend {args.backend!r}; choose hf, openai or fake")
    config = GenerateConfig(
        output=args.output,
        seed=args.seed,
        num_samples=args.num_samples,
        num_retries=args.num_retries,
        shuffle=not args.no_shuffle,
        num_partitions=args.num_partitions,
        partition=args.partition,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        filters=FilterConfig(min_chars=args.min_chars, max_chars=args.max_chars, blocklist=args.blocklist),
    )
    try:
        config.validate()
        captions = read_captions(
            args.captions, column=args.column, split=args.split
        )  # before any model loads
        if not captions:
            raise CLIError(f"{args.captions}: no captions")
        backend = _make_text_backend(args)
        report = generate_triplets(captions, backend, config, progress=not args.no_progress)
    except (
        ValueError,
        BackendError,
    ) as exc:  # TextSourceError, TextModelError and config errors are ValueErrors
        raise CLIError(str(exc)) from exc
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"{report.summary()}; triplets in {args.output}")
    if report.backend_errors:
        print(
            f"ip2p: {report.backend_errors} caption(s) failed at the backend; rerun to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _finetune_text_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.text.finetune import PRESETS

    p = sub.add_parser(
        "finetune-text",
        help="fine-tune a causal language model on seed triplets (or train the toy LM)",
        description="Fine-tune a transformers causal LM to write triplets (paper 3.1.1: GPT-3 on 700 "
        "human-written triplets, 1 epoch): prompt = caption + '\\n##\\n', completion = instruction + "
        "'\\n%%\\n' + edited caption + '\\nEND', loss on the completion. Full or LoRA; CPU, GPU, or several "
        "GPUs with `accelerate launch --multi_gpu -m ip2p.cli finetune-text ...`. Checkpoints every --checkpoint-every "
        "steps; rerunning with the same --output resumes. `--preset toy` trains the toy world's LM from scratch.",
    )
    p.add_argument(
        "--preset", default="paper", choices=sorted(PRESETS), help="starting settings (default: %(default)s)"
    )
    p.add_argument(
        "--model",
        default=None,
        help="causal LM folder or hub id to fine-tune ('toy': the toy LM from scratch)",
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="seed triplets: a JSONL of input/edit/output lines or 'toy' (default: the paper's human-written file where present, else toy)",
    )
    p.add_argument("-o", "--output", default=None, help="output folder (default: the preset's)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the seed triplets (paper preset: 1)")
    p.add_argument(
        "--max-steps", type=int, default=None, help="optimizer steps (default: epochs x steps per epoch)"
    )
    p.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (paper preset: 1e-5; LoRA wants ~2e-4)"
    )
    p.add_argument(
        "--lr-schedule", choices=["constant", "linear", "cosine"], default=None, help="decay after warm-up"
    )
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per device and step")
    p.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps")
    p.add_argument("--max-length", type=int, default=None, help="truncate examples to this many tokens")
    p.add_argument(
        "--lora",
        action="store_true",
        default=None,
        help="train a LoRA adapter (needs peft) instead of all weights",
    )
    p.add_argument("--lora-r", type=int, default=None, help="LoRA rank (default: 16)")
    p.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default: 32)")
    p.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout (default: 0.05)")
    p.add_argument(
        "--lora-targets", default=None, help="comma-separated module names, or all-linear (default)"
    )
    p.add_argument(
        "--merge-lora", action="store_true", default=None, help="save the merged model, not the adapter"
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=None, help="optimizer steps between checkpoints (0: none)"
    )
    p.add_argument("--keep-checkpoints", type=int, default=None, help="how many recent checkpoints to keep")
    p.add_argument("--no-resume", action="store_true", help="start over, deleting the output's checkpoints")
    p.add_argument(
        "--relabel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="toy seeds only: rename colours, kinds, sizes, cells, backgrounds and styles every epoch "
        "(the toy-relabel preset does)",
    )
    p.add_argument(
        "--toy-width", type=int, default=None, help="--model toy: hidden size of the new model (default: 128)"
    )
    p.add_argument("--toy-layers", type=int, default=None, help="--model toy: number of layers (default: 4)")
    p.add_argument(
        "--seed", type=int, default=None, help="seed of initialisation and data order (default: 0)"
    )
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None, help="autocast on GPU")
    p.add_argument(
        "--cpu", action="store_true", default=None, help="train on the CPU even where a GPU is present"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune_text)


def cmd_finetune_text(args: argparse.Namespace) -> int:
    from ip2p.text.finetune import finetune, preset

    try:
        config = preset(
            args.preset,
            model=args.model,
            seeds=args.seeds,
            output=args.output,
            epochs=args.epochs,
            max_steps=args.max_steps,
            learning_rate=args.lr,
            lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            gradient_accumulation_steps=args.grad_accum,
            max_length=args.max_length,
            lora=args.lora,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            lora_target_modules=args.lora_targets,
            merge_lora=args.merge_lora,
            checkpoint_every=args.checkpoint_every,
            keep_checkpoints=args.keep_checkpoints,
            resume=False if args.no_resume else None,
            relabel=args.relabel,
            toy_width=args.toy_width,
            toy_layers=args.toy_layers,
            seed=args.seed,
            mixed_precision=args.mixed_precision,
            cpu=args.cpu,
        )
        config.validate()
        from ip2p.text.sources import read_seed_triplets

        read_seed_triplets(config.seeds)  # a missing seed file fails before any model loads
        output = finetune(config, progress=not args.no_progress)
    except ValueError as exc:  # TextSourceError, TextModelError and config errors are ValueErrors
        raise CLIError(str(exc)) from exc
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    summary = json.loads((output / "train_summary.json").read_text())
    print(
        f"trained {summary['steps']} steps in {summary['seconds']}s (final loss {summary['final_loss']:.3f}); model in {output}"
    )
    return 0


# -- gen-pairs -----------------------------------------------------------------------------------------------
def _gen_pairs_parser(sub: argparse._SubParsersAction) -> None:
    from dataclasses import MISSING

    from ip2p.pairs.generate import PRESETS, config_fields

    p = sub.add_parser(
        "gen-pairs",
        help="generate CLIP-filtered image pairs for caption triplets (paper 3.1.2)",
        description="Stage 2 of dataset synthesis: for each (caption, instruction, edited caption) triplet, "
        "generate candidate image pairs with a text-to-image model and the paper's Prompt-to-Prompt variant, "
        "score them with CLIP and keep the best. Defaults are the paper's; --preset toy sets the toy world's. "
        "Output: Parquet shards in the official schema (or --format original), a manifest and a report. "
        "Running the same command again resumes; --shard/--num-shards split the work over a job array and "
        "`accelerate launch -m ip2p.cli gen-pairs ...` over processes.",
    )
    p.add_argument("triplets", help="JSONL of {input (or caption), edit, output} lines (stage 1's output)")
    p.add_argument("-o", "--output", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="a named set of defaults; flags override it (default: %(default)s)",
    )
    for f in config_fields():
        if f.name in ("triplets", "output"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if str(f.type) == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"int": int, "int | None": int, "float": float}.get(str(f.type), str)
            p.add_argument(
                flag,
                dest=f.name,
                type=kind,
                default=None,
                help=f"{text} (default: {default})" if default is not None else text,
            )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON on stdout")
    p.set_defaults(func=cmd_gen_pairs)


def cmd_gen_pairs(args: argparse.Namespace) -> int:
    from ip2p.pairs.generate import apply_preset, config_fields, generate_pairs

    overrides = {
        f.name: getattr(args, f.name)
        for f in config_fields()
        if f.name not in ("triplets", "output") and getattr(args, f.name) is not None
    }
    try:
        config = apply_preset(args.preset, {**overrides, "triplets": args.triplets, "output": args.output})
        config.validate()
        manifest = generate_pairs(config, progress=not args.no_progress)
    except ValueError as exc:  # config, input and model-loading errors
        raise CLIError(str(exc)) from exc
    if manifest and args.json:
        print(json.dumps(manifest, indent=2))
    elif manifest:
        print(f"{manifest['summary']}; output in {args.output}")
    return 0


# -- evaluate ------------------------------------------------------------------------------------------------
# EvalRunConfig's fields whose flags come from add_model_flags and -o/--output, not from its own metadata
_EVAL_SHARED_FLAGS = ("output", "model", "model_config", "device", "dtype")


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from ip2p.evaluate.config import EvalRunConfig
    from ip2p.flags import add_config_flags

    p = sub.add_parser(
        "evaluate",
        help="measure an editor: CLIP direction vs image similarity over guidance sweeps, against SDEdit (paper 4)",
        description="Edit every test item with the editor at every setting of a guidance sweep, and with the "
        "SDEdit baseline (img2img with the text-to-image model and the output caption) over strengths; measure "
        "CLIP image, directional and output-caption similarity, pixel metrics against targets where the test "
        "set has them, and every metric plug-in (the toy oracle's accuracy per edit type). Writes records, a "
        "summary (JSONL, CSV), a plot like the paper's and a grid of examples. Rerun the same command to resume; "
        "`accelerate launch -m ip2p.cli evaluate ...` splits the items over processes.",
    )
    add_model_flags(p, default_model="toy")
    p.add_argument("-o", "--output", required=True, help="output folder (rerun the same command to resume)")
    add_config_flags(p, EvalRunConfig, exclude=_EVAL_SHARED_FLAGS)
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ip2p.evaluate.config import EvalRunConfig, run_evaluation
    from ip2p.flags import config_overrides

    config = EvalRunConfig(
        output=args.output,
        model=args.model,
        model_config=args.config,
        device=args.device,
        dtype=args.dtype,
        **config_overrides(args, EvalRunConfig, exclude=_EVAL_SHARED_FLAGS),
    )
    try:
        result = run_evaluation(config)
    except ValueError as exc:  # settings, test sets and methods (EvaluationError), models (ModelLoadError)
        raise CLIError(str(exc)) from exc
    summary = result["summary"]
    if not summary:  # a non-main accelerate process
        return 0
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(result["report"])
    print(f"output in {args.output} (summary.csv, plot.png, examples.png)")
    return 0


# -- toy world -----------------------------------------------------------------------------------------------
def _toy_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "toy",
        help="the toy world: train its miniature Stable Diffusion, measure it, write its seed triplets",
        description="Commands of the toy world. `ip2p toy train-base --out DIR` trains the VAE, CLIP and UNet from "
        "scratch with fixed seeds (resumable: run it again to continue); `ip2p toy quality --model DIR` "
        "measures the quality bars; `ip2p toy seeds -o FILE` writes the 700 seed triplets.",
    )
    toy = p.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    for name, text in (
        ("train-base", "train the toy VAE, CLIP and UNet (see `ip2p toy train-base --help`)"),
        ("quality", "measure the toy models' quality bars (see `ip2p toy quality --help`)"),
    ):
        q = toy.add_parser(name, help=text, add_help=False)
        q.add_argument("rest", nargs=argparse.REMAINDER, help="the command's own flags")
        q.set_defaults(func=cmd_toy, toy_main=name)
    q = toy.add_parser("seeds", help="write the toy seed triplets in the paper's JSONL format")
    q.add_argument("-o", "--output", required=True, help="JSONL file to write")
    q.add_argument("-n", type=int, default=700, help="number of triplets (default: %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    q.set_defaults(func=cmd_toy, toy_main="seeds")
    q = toy.add_parser(
        "exact-pairs",
        help="render the exact image pairs of toy triplets (the ablation of synthesized pairs)",
        description="Parse each triplet's caption to its scene, apply the instruction exactly and render both: "
        "Parquet shards in the official schema, trainable with `ip2p train`. Unreadable or impossible triplets "
        "are skipped and counted.",
    )
    q.add_argument("triplets", help="JSONL of {input, edit, output} lines")
    q.add_argument("-o", "--output", required=True, help="output folder (rerun to resume)")
    q.add_argument("--shard-size", type=int, default=500, help="pairs per shard (default: %(default)s)")
    q.add_argument("--resolution", type=int, default=64, help="image side (default: %(default)s)")
    q.set_defaults(func=cmd_toy, toy_main="exact-pairs")
    q = toy.add_parser(
        "judge-pairs",
        help="judge a pair dataset with the oracle: how faithful each edit type's pairs are",
        description="For each pair, parse its input caption, apply its instruction and let the oracle read both "
        "images: the share of pairs whose input shows the caption, whose edit is right and whose other attributes "
        "are unchanged, per edit type.",
    )
    q.add_argument(
        "data", nargs="+", help="Parquet files/folders (official schema) or an original-format folder"
    )
    q.add_argument(
        "--filters",
        action="store_true",
        help="DATA holds every candidate with its CLIP scores (gen-pairs with thresholds of -1 and --top-k "
        "equal to --num-candidates): replay CLIP filter settings on it and judge what each keeps",
    )
    q.add_argument(
        "--image-image",
        default="0.75",
        help="--filters: image-image thresholds to compare, comma-separated (default: %(default)s)",
    )
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_toy, toy_main="judge-pairs")
    q = toy.add_parser(
        "type-weights",
        help="sample weights that balance a toy pair dataset's edit types (for `ip2p train --sample-weights`)",
        description="Read each pair's edit type from its instruction with the toy grammar and write one weight a "
        "line, in the dataset's order: with --power 1 every type is drawn equally often in training. Pairs with "
        "an instruction the grammar cannot read keep weight 1.",
    )
    q.add_argument(
        "data", nargs="+", help="Parquet files/folders (official schema) or an original-format folder"
    )
    q.add_argument("-o", "--output", required=True, help="text file to write")
    q.add_argument(
        "--power",
        type=float,
        default=1.0,
        help="1: equal types; 0.5: half-way from the data's proportions; 0: unchanged (default: %(default)s)",
    )
    q.add_argument(
        "--shares",
        default=None,
        help="each type's share of the draws instead, as TYPE=SHARE for every type in the data, comma-separated "
        "(normalised; for example the test set's own mix)",
    )
    q.set_defaults(func=cmd_toy, toy_main="type-weights")


def cmd_toy(args: argparse.Namespace) -> int:
    if args.toy_main == "seeds":
        from ip2p.toy.seeds import seed_triplets, write_jsonl

        path = write_jsonl(args.output, seed_triplets(args.n, seed=args.seed))
        print(f"wrote {args.n} triplets to {path}")
        return 0
    if args.toy_main == "exact-pairs":
        from ip2p.toy.exact_pairs import exact_pairs

        try:
            manifest = exact_pairs(args.triplets, args.output, args.shard_size, args.resolution)
        except (ValueError, OSError) as exc:
            raise CLIError(str(exc)) from exc
        print(
            f"{manifest['kept']} of {manifest['total']} triplets rendered ({manifest.get('skipped', 0)} "
            f"skipped); output in {args.output}"
        )
        return 0
    if args.toy_main == "judge-pairs":
        from ip2p.datasets import DatasetError
        from ip2p.toy.judge_pairs import (
            filter_report,
            filter_settings,
            format_filter_report,
            format_report,
            judge_pairs,
        )

        try:
            thresholds = [float(t) for t in args.image_image.split(",") if t.strip()]
        except ValueError:
            raise CLIError(
                f"--image-image: expected numbers separated by commas, got {args.image_image!r}"
            ) from None
        data = args.data if len(args.data) > 1 else args.data[0]
        try:
            if args.filters:
                report = filter_report(data, filter_settings(thresholds), progress=not args.no_progress)
                text = format_filter_report(report)
            else:
                report = judge_pairs(data, progress=not args.no_progress)
                text = format_report(report)
        except (DatasetError, ValueError, OSError) as exc:
            raise CLIError(str(exc)) from exc
        print(json.dumps(report, indent=2) if args.json else text)
        return 0
    if args.toy_main == "type-weights":
        from ip2p.datasets import DatasetError
        from ip2p.toy.balance import parse_shares, write_type_weights

        data = args.data if len(args.data) > 1 else args.data[0]
        try:
            shares = parse_shares(args.shares) if args.shares is not None else None
            summary = write_type_weights(data, args.output, args.power, shares)
        except (DatasetError, ValueError, OSError) as exc:
            raise CLIError(str(exc)) from exc
        for name, row in summary.items():
            print(
                f"{name:12} {row['pairs']:7d} pairs  {row['share']:6.1%} of the data  {row['share_drawn']:6.1%} drawn"
            )
        print(f"weights written to {args.output}")
        return 0
    if args.toy_main == "train-base":
        from ip2p.toy.train_base import main as train_main

        return int(train_main(args.rest) or 0)
    from ip2p.toy.quality import main as quality_main

    return int(quality_main(args.rest) or 0)


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
    _gen_text_parser(sub)
    _finetune_text_parser(sub)
    _train_parser(sub)
    _toy_parser(sub)
    _gen_pairs_parser(sub)
    _evaluate_parser(sub)
    _serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["toy"] and argv[1:2] in (["train-base"], ["quality"]):
        # These two own their flags (and --help): hand them the rest of the command line untouched.
        return cmd_toy(argparse.Namespace(toy_main=argv[1], rest=argv[2:]))
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
