"""Peak resident memory and seconds of one edit: our EditPipeline vs diffusers' InstructPix2Pix pipelines.

Both load the same saved diffusers folder (random weights built from configs, no download), each measurement in
a fresh Python process, so that its peak resident memory (``VmHWM`` at the end, see ``peak_rss_gib``) is that one
load and edit alone. Runs alternate ip2p / diffusers. Measured for no memory options, and for VAE slicing + VAE
tiling + attention slicing ("auto"), the memory options that apply on a CPU (diffusers' pipeline gets the same through
its own ``enable_*`` methods). Reported: peak RSS in GiB and seconds (load, edit), ip2p / diffusers of each.

Configurations:
    sd15  SD-1.5-architecture UNet (8 input channels), SD VAE, a CLIP-L-sized text encoder; 512 px, 2 steps.
    sdxl  a small SDXL-architecture editor: UNet of block_out_channels (320, 640) (one down level with
          cross-attention of 2 transformer layers), the SD VAE as SDXL's (fp32-upcast flag, SDXL's scaling
          factor), two text encoders of 512 and 768 features (6 layers each); 512 px, 1 step.

Usage:
    python benchmarks/bench_memory.py [--configs sd15,sdxl] [--resolution 512] [--steps 2] [--threads N]

Writes a markdown table to stdout and everything to ``benchmarks/results/bench_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "bench_memory.json"
IMPLS = ("ip2p", "diffusers")
OPTION_SETS = ("none", "slicing")  # slicing: VAE slicing + VAE tiling + attention slicing "auto"
PROMPT = "turn it into a watercolor painting"

# The SD-1.5 architecture's UNet (8 input channels) and VAE configs, as bench_edit.py times them.
from bench_edit import SD15_UNET, SD15_VAE  # noqa: E402

# openai/clip-vit-large-patch14's text tower (vocabulary: our byte-level tokenizer's; same compute per token).
CLIP_L_TEXT = dict(hidden=768, mlp=3072, heads=12, layers=12)
# SDXL's UNet layout (linear projections, "text_time" embedding of pooled text and six size ids), cut to its
# first two levels: SDXL's is (320, 640, 1280) with (1, 2, 10) transformer layers.
SDXL_SMALL_UNET = dict(
    block_out_channels=(320, 640),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    attention_head_dim=(5, 10),
    layers_per_block=2,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    in_channels=8,
    out_channels=4,
    sample_size=64,
)
SDXL_SMALL_TEXT = ((512, 2048, 8), (768, 3072, 12))  # (features, MLP width, heads) of its two text encoders
SDXL_SMALL_TEXT_LAYERS = 6
# diffusers' stable-diffusion-xl-base-1.0 unet/config.json and vae/config.json where they differ from above.
SDXL_UNET = dict(
    SDXL_SMALL_UNET,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    sample_size=128,
)
SDXL_VAE_EXTRA = dict(scaling_factor=0.13025, force_upcast=True, sample_size=1024)
# CLIP ViT-L's and OpenCLIP ViT-bigG's text towers: (features, MLP width, heads, layers)
SDXL_TEXT = ((768, 3072, 12, 12), (1280, 5120, 20, 32))

CONFIGS = {
    "sd15": dict(resolution=512, steps=2),
    "sdxl": dict(resolution=512, steps=1),  # one step: 2 cores draw 4 of its runs in about 6 minutes
}


def _text_config(tokenizer, hidden: int, mlp: int, heads: int, layers: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=mlp,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build(name: str, seed: int = 0):
    """EditComponents of configuration ``name`` (``sd15``, ``sdxl`` (small), ``sdxl-full``, ``tiny``,
    ``tiny-sdxl``): random weights, deterministic in ``seed``, built offline."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from ip2p.models import EditComponents
    from ip2p.tiny import tiny_components, tiny_scheduler, tiny_sdxl_components
    from ip2p.tokenization import build_clip_tokenizer

    if name == "tiny":
        return tiny_components(edit=True, seed=seed)
    if name == "tiny-sdxl":
        return tiny_sdxl_components(edit=True, seed=seed)
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(model_max_length=77)
    if name == "sd15":
        return EditComponents(
            unet=UNet2DConditionModel(**SD15_UNET),
            vae=AutoencoderKL(**SD15_VAE),
            text_encoder=CLIPTextModel(_text_config(tokenizer, **CLIP_L_TEXT)),
            tokenizer=tokenizer,
            scheduler=tiny_scheduler(),
            name="sd15-random",
        )
    if name in ("sdxl", "sdxl-full"):
        if name == "sdxl":
            (h1, m1, n1), (h2, m2, n2) = SDXL_SMALL_TEXT
            texts = ((h1, m1, n1, SDXL_SMALL_TEXT_LAYERS), (h2, m2, n2, SDXL_SMALL_TEXT_LAYERS))
            unet = SDXL_SMALL_UNET
        else:
            texts, unet = SDXL_TEXT, SDXL_UNET
        (h1, m1, n1, l1), (h2, m2, n2, l2) = texts
        return EditComponents(
            unet=UNet2DConditionModel(
                **unet, cross_attention_dim=h1 + h2, projection_class_embeddings_input_dim=6 * 256 + h2
            ),
            vae=AutoencoderKL(**dict(SD15_VAE, **SDXL_VAE_EXTRA)),
            text_encoder=CLIPTextModel(_text_config(tokenizer, h1, m1, n1, l1)),
            tokenizer=tokenizer,
            scheduler=tiny_scheduler(),
            name=f"{name}-random",
            info={"force_zeros_for_empty_prompt": True, "is_cosxl_edit": False},
            text_encoder_2=CLIPTextModelWithProjection(
                _text_config(tokenizer, h2, m2, n2, l2, projection_dim=h2)
            ),
            tokenizer_2=tokenizer,
        )
    raise SystemExit(f"unknown config {name!r}")


def params_millions(components) -> dict[str, float]:
    names = ("unet", "vae", "text_encoder", "text_encoder_2")
    return {
        n: round(sum(p.numel() for p in getattr(components, n).parameters()) / 1e6, 1)
        for n in names
        if getattr(components, n) is not None
    }


def test_image(size: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))


def load(impl: str, folder: Path, device: str, dtype: str):
    """``impl``'s pipeline loaded from ``folder``."""
    if impl == "ip2p":
        from ip2p.pipeline import EditPipeline

        return EditPipeline.from_pretrained(str(folder), device=device, dtype=dtype)
    import torch
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline

    sdxl = "XL" in json.loads((folder / "model_index.json").read_text())["_class_name"]
    cls = StableDiffusionXLInstructPix2PixPipeline if sdxl else StableDiffusionInstructPix2PixPipeline
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    extra = {} if sdxl else dict(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(str(folder), dtype=torch_dtype, **extra).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_memory_options(impl: str, pipe, options: str) -> None:
    """``options``: none, slicing (VAE slicing + tiling + attention slicing), vae (VAE slicing + tiling),
    attention (attention slicing), model / sequential (CPU offload), low-memory (model offload + all slicing)."""
    if options == "none":
        return
    offload = {"model": "model", "sequential": "sequential", "low-memory": "model"}.get(options)
    vae = options in ("slicing", "vae", "low-memory")
    attention = "auto" if options in ("slicing", "attention", "low-memory") else None
    if impl == "ip2p":
        if options == "low-memory":
            from ip2p.edit_config import RuntimeOptions

            pipe.apply_options(RuntimeOptions(low_memory=True))
        else:
            pipe.enable_memory_options(
                cpu_offload=offload, vae_slicing=vae, vae_tiling=vae, attention_slicing=attention
            )
        return
    if vae:  # what diffusers' (deprecated) enable_vae_slicing/tiling do; its SDXL editor lacks them
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
    if attention:
        pipe.enable_attention_slicing(attention)
    if offload == "model":
        pipe.enable_model_cpu_offload()
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload()


def edit(impl: str, pipe, image, steps: int, seed: int = 0):
    """One edit at the paper's guidance scales (7.5 text, 1.5 image)."""
    if impl == "ip2p":
        return pipe(
            image,
            PROMPT,
            seed=seed,
            num_inference_steps=steps,
            resolution=image.width,
            text_guidance_scale=7.5,
            image_guidance_scale=1.5,
        ).images[0]
    import torch

    # diffusers' SDXL editor draws at the UNet's default size unless told; its SD editor at the image's
    size = dict(height=image.height, width=image.width) if hasattr(pipe, "text_encoder_2") else {}
    return pipe(
        **size,
        prompt=PROMPT,
        image=image,
        num_inference_steps=steps,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]


def peak_rss_gib() -> float:
    """This process's peak resident memory. Linux: VmHWM, the high-water mark of this program's own memory;
    ``ru_maxrss`` there also counts the parent's resident memory at the fork (it survives exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux and BSD: KiB


def worker(args: argparse.Namespace) -> int:
    """One load and one edit in this process; prints one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = load(args.impl, args.folder, "cpu", "fp32")
    apply_memory_options(args.impl, pipe, args.options)
    loaded = time.perf_counter()
    edit(args.impl, pipe, test_image(args.resolution), args.steps)
    done = time.perf_counter()
    print(
        json.dumps(
            dict(
                load_s=loaded - start,
                edit_s=done - loaded,
                peak_rss_gib=peak_rss_gib(),
                threads=torch.get_num_threads(),
            )
        )
    )
    return 0


def measure(impl: str, folder: Path, options: str, resolution: int, steps: int, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--worker", "--impl", impl, "--folder", str(folder)]
    command += ["--options", options, "--resolution", str(resolution), "--steps", str(steps)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{impl} {options} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(name: str, resolution: int, steps: int, threads: int | None, workdir: Path) -> list[dict]:
    from ip2p.models import save_edit_model

    start = time.perf_counter()
    components = build(name)
    params = params_millions(components)
    folder = save_edit_model(components, workdir / name)
    del components
    print(f"[bench_memory] {name}: built and saved in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    rows = []
    for options in OPTION_SETS:
        runs = {}
        for impl in IMPLS:  # alternating: ip2p, diffusers, ip2p, diffusers
            runs[impl] = measure(impl, folder, options, resolution, steps, threads)
            print(f"[bench_memory] {name} {options} {impl}: {runs[impl]}", file=sys.stderr, flush=True)
        ours, theirs = runs["ip2p"], runs["diffusers"]
        rows.append(
            dict(
                config=name,
                options=options,
                resolution=resolution,
                steps=steps,
                dtype="fp32",
                params_millions=params,
                runs=runs,
                ratio_peak_rss=ours["peak_rss_gib"] / theirs["peak_rss_gib"],
                ratio_edit_s=ours["edit_s"] / theirs["edit_s"],
                ratio_total_s=(ours["load_s"] + ours["edit_s"]) / (theirs["load_s"] + theirs["edit_s"]),
            )
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| config | options | px | steps | ip2p peak RSS GiB | diffusers peak RSS GiB | RSS ip2p/diffusers "
        "| ip2p edit s | diffusers edit s | edit s ip2p/diffusers | load + edit s ip2p/diffusers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ours, theirs = r["runs"]["ip2p"], r["runs"]["diffusers"]
        lines.append(
            f"| {r['config']} | {r['options']} | {r['resolution']} | {r['steps']} | {ours['peak_rss_gib']:.2f} | "
            f"{theirs['peak_rss_gib']:.2f} | {r['ratio_peak_rss']:.3f} | {ours['edit_s']:.1f} | "
            f"{theirs['edit_s']:.1f} | {r['ratio_edit_s']:.3f} | {r['ratio_total_s']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="sd15,sdxl", help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default 512)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    # one measurement, in a process of its own (what the benchmark runs)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            parser.error(f"unknown config {n!r}; choose from {', '.join(CONFIGS)}")

    import diffusers
    import torch
    import transformers

    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_memory-") as workdir:
        for n in names:
            load_before = os.getloadavg()
            spec = CONFIGS[n]
            for row in bench(
                n,
                args.resolution or spec["resolution"],
                args.steps or spec["steps"],
                args.threads,
                Path(workdir),
            ):
                row.update(when=time.strftime("%Y-%m-%dT%H:%M:%S%z"), loadavg_before=load_before)
                row.update(loadavg_after=os.getloadavg())
                rows.append(row)
    report = dict(
        benchmark="bench_memory",
        note=args.note,
        total_s=time.perf_counter() - started,
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
    print(f"total {report['total_s']:.0f} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
