"""Seconds and peak GPU memory of one edit for each memory option: our EditPipeline vs diffusers' editors.

On a CUDA machine: one 512 px edit of the SD-1.5 architecture (fp16, 20 and 100 steps) and one 1024 px edit of
the SDXL architecture (fp16, 20 steps), random weights built from configs (``bench_memory.build``: no download),
saved once and loaded by both pipelines from that folder. Each memory option (none, model offload, sequential
offload, VAE slicing + tiling, attention slicing, ``--low-memory``) is timed at the first step count, no option at
every step count; each run loads the pipeline afresh, applies the option, draws one 1-step warm-up edit (on a
GPU), then the timed edit, whose peak GPU memory is ``torch.cuda.max_memory_allocated`` (reset after loading). Runs
alternate ip2p / diffusers.

``--tiny`` runs the same on the CPU with ``ip2p.tiny`` components at 32 px and 2 steps (what the tests run):
the offload rows (offload and ``--low-memory``) read "needs a GPU", and there is no GPU memory to report.

Usage:
    python benchmarks/gpu_edit.py                      # on a CUDA machine
    python benchmarks/gpu_edit.py --tiny --device cpu  # the pipeline of the benchmark, in seconds

Writes a markdown table to stdout and everything to ``benchmarks/results/gpu_edit.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
from bench_memory import IMPLS, apply_memory_options, build, edit, load, test_image  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu_edit.json"
# option name -> what it turns on (bench_memory.apply_memory_options reads the names)
OPTIONS = {
    "none": "no memory option",
    "model": "model CPU offload",
    "sequential": "sequential CPU offload",
    "vae": "VAE slicing + tiling",
    "attention": "attention slicing (auto)",
    "low-memory": "--low-memory (model offload, VAE slicing + tiling, attention slicing)",
}
NEEDS_GPU = ("model", "sequential", "low-memory")
NEEDS_GPU_TEXT = "needs a GPU"
# name -> (components, px, step counts); the first step count is the one every option runs at
CONFIGS = {
    "sd15": ("sd15", 512, (20, 100)),
    "sdxl": ("sdxl-full", 1024, (20,)),
}
TINY_CONFIGS = {
    "tiny": ("tiny", 32, (2,)),
    "tiny-sdxl": ("tiny-sdxl", 32, (2,)),
}


def run_one(impl: str, folder: Path, option: str, size: int, steps: int, device: str, dtype: str) -> dict:
    """Load ``impl``'s pipeline, apply ``option``, one warm-up edit, then the timed edit."""
    import torch

    cuda = device.startswith("cuda")
    pipe = load(impl, folder, device, dtype)
    apply_memory_options(impl, pipe, option)
    image = test_image(size)
    if cuda:
        edit(impl, pipe, image, 1)  # warm-up: kernel choice, the allocator's pool
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    edit(impl, pipe, image, steps)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del pipe
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return dict(seconds=seconds, peak_vram_gib=peak)


def bench(
    name: str, spec: tuple, options: list[str], device: str, dtype: str, steps: tuple | None, workdir: Path
) -> list[dict]:
    import torch

    from ip2p.models import save_edit_model

    components_name, size, step_counts = spec
    step_counts = steps or step_counts
    components = build(components_name)
    if dtype != "fp32":  # saved in the dtype that runs: half the disk and load time of fp32
        half = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        for module in (components.unet, components.vae, *components.text_encoders):
            module.to(half)
    folder = save_edit_model(components, workdir / name)
    del components
    gc.collect()
    plan = [(option, step_counts[0]) for option in options]
    plan += [("none", n) for n in step_counts[1:] if "none" in options]
    rows = []
    for option, n in plan:
        row = dict(config=name, resolution=size, steps=n, options=option, device=device, dtype=dtype)
        if option in NEEDS_GPU and not device.startswith("cuda"):
            row.update(status=NEEDS_GPU_TEXT)
        else:
            runs = {}
            for impl in IMPLS:  # alternating: ip2p, diffusers
                runs[impl] = run_one(impl, folder, option, size, n, device, dtype)
                print(
                    f"[gpu_edit] {name} {option} {n} steps {impl}: {runs[impl]}", file=sys.stderr, flush=True
                )
            ours, theirs = runs["ip2p"], runs["diffusers"]
            row.update(status="ok", runs=runs, ratio_s=ours["seconds"] / theirs["seconds"])
            if ours["peak_vram_gib"] is not None:
                row.update(ratio_peak_vram=ours["peak_vram_gib"] / theirs["peak_vram_gib"])
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| config | px | steps | options | ip2p s | diffusers s | s ip2p/diffusers | ip2p peak VRAM GiB "
        "| diffusers peak VRAM GiB | VRAM ip2p/diffusers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        head = f"| {r['config']} | {r['resolution']} | {r['steps']} | {r['options']} |"
        if r["status"] != "ok":
            lines.append(head + f" {r['status']} |" * 6)
            continue
        ours, theirs = r["runs"]["ip2p"], r["runs"]["diffusers"]
        if ours["peak_vram_gib"] is None:
            vram = " - | - | - |"
        else:
            vram = (
                f" {ours['peak_vram_gib']:.2f} | {theirs['peak_vram_gib']:.2f} | {r['ratio_peak_vram']:.3f} |"
            )
        lines.append(head + f" {ours['seconds']:.2f} | {theirs['seconds']:.2f} | {r['ratio_s']:.3f} |" + vram)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tiny", action="store_true", help="ip2p.tiny components at 32 px, 2 steps (CPU: tests)"
    )
    parser.add_argument(
        "--configs", default=None, help="comma-separated (default: sd15,sdxl; tiny,tiny-sdxl)"
    )
    parser.add_argument("--options", default=",".join(OPTIONS), help="comma-separated: " + ", ".join(OPTIONS))
    parser.add_argument("--steps", default=None, help="comma-separated step counts, instead of each config's")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda where present)")
    parser.add_argument(
        "--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="default: fp16 on CUDA"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--note", default="", help="free text stored with the results")
    args = parser.parse_args(argv)

    configs = TINY_CONFIGS if args.tiny else CONFIGS
    names = [n.strip() for n in (args.configs or ",".join(configs)).split(",") if n.strip()]
    for n in names:
        if n not in configs:
            parser.error(f"unknown config {n!r}; choose from {', '.join(configs)}")
    options = [o.strip() for o in args.options.split(",") if o.strip()]
    for o in options:
        if o not in OPTIONS:
            parser.error(f"unknown option {o!r}; choose from {', '.join(OPTIONS)}")
    try:
        steps = tuple(int(s) for s in args.steps.split(",")) if args.steps else None
    except ValueError:
        parser.error(f"--steps {args.steps!r}: give whole numbers separated by commas, e.g. 20,100")

    import diffusers
    import torch
    import transformers

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: this machine has no CUDA GPU; use --tiny --device cpu")
    dtype = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")

    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_edit-") as workdir:
        for n in names:
            rows += bench(n, configs[n], options, device, dtype, steps, Path(workdir))
    report = dict(
        benchmark="gpu_edit",
        note=args.note,
        when=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        device=torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        options=OPTIONS,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        versions=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
        ),
        results=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
