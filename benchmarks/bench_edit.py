"""Seconds per edit: our EditPipeline vs diffusers' StableDiffusionInstructPix2PixPipeline, side by side.

Both pipelines share the *same* component objects (UNet, VAE, text encoder, tokenizer) and get schedulers built
from the same config; they run with the same seed and settings, alternating (A B A B ...) after one warm-up run
each, so a load change on the machine hits both alike. Reported: median seconds per edit, ours / diffusers of
the medians (the bar) and of the fastest runs (robust where other jobs share the machine: they only add time).

Configurations:
    tiny  ``ip2p.tiny.tiny_components`` at 32 px, 20 steps (measures the pipelines' own overhead).
    sd15  SD-1.5-architecture UNet (8 input channels), SD VAE and a CLIP-L-sized text encoder, random weights
          built from inline configs (no download), 256 px, 3 steps (measures the model-bound case).

Usage:
    python benchmarks/bench_edit.py [--configs tiny,sd15] [--repeats N] [--threads N] [--dtype bf16]

Writes a markdown table to stdout and everything (per-run times, versions, machine load) to
``benchmarks/results/bench_edit.json``. The bar: ours no slower than diffusers (ratio <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

BAR = 1.05
DEFAULT_THREADS = torch.get_num_threads()
RESULTS = Path(__file__).parent / "results" / "bench_edit.json"

# diffusers' stable-diffusion-v1-5 unet/config.json, with the editing model's 8 input channels.
SD15_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=(320, 640, 1280, 1280),
    center_input_sample=False,
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=8,
    layers_per_block=2,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=32,
    out_channels=4,
    sample_size=64,
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
# diffusers' stable-diffusion-v1-5 vae/config.json.
SD15_VAE = dict(
    act_fn="silu",
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
)
# openai/clip-vit-large-patch14's text tower (vocabulary: our byte-level tokenizer's; same compute per token).
CLIP_L_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)

CONFIGS = {
    # threads: the default where --threads is not given (None: torch's own, one per core). The tiny model gains
    # nothing from threads, and its many small ops thrash when another job shares the cores.
    "tiny": dict(resolution=32, steps=20, repeats=10, threads=1),
    "sd15": dict(resolution=256, steps=3, repeats=2, threads=None),
}


def build(name: str):
    """EditComponents of configuration ``name``, deterministic (seed 0), built offline."""
    from ip2p.models import EditComponents
    from ip2p.tiny import tiny_components, tiny_scheduler

    if name == "tiny":
        return tiny_components(edit=True, seed=0)
    if name == "sd15":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from ip2p.tokenization import build_clip_tokenizer

        torch.manual_seed(0)
        tokenizer = build_clip_tokenizer(model_max_length=77)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **CLIP_L_TEXT,
            )
        )
        return EditComponents(
            unet=UNet2DConditionModel(**SD15_UNET),
            vae=AutoencoderKL(**SD15_VAE),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=tiny_scheduler(),
            name="sd15-random",
        )
    raise SystemExit(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")


def params_millions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def bench(name: str, repeats: int | None, dtype: str, threads: int | None = None) -> dict:
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from ip2p.pipeline import EditPipeline

    spec = CONFIGS[name]
    repeats = repeats or spec["repeats"]
    torch.set_num_threads(threads or spec["threads"] or DEFAULT_THREADS)
    t0 = time.perf_counter()
    components = build(name)
    build_s = time.perf_counter() - t0

    ours = EditPipeline(
        components, device="cpu", dtype=dtype
    )  # moves the shared modules to the dtype, eval mode
    theirs = StableDiffusionInstructPix2PixPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=type(components.scheduler).from_config(components.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    theirs.set_progress_bar_config(disable=True)

    size, steps, seed, prompt = spec["resolution"], spec["steps"], 0, "turn it into a watercolor painting"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))

    def run_ours() -> np.ndarray:
        result = ours(
            image,
            prompt,
            seed=seed,
            num_inference_steps=steps,
            resolution=size,
            text_guidance_scale=7.5,
            image_guidance_scale=1.5,
        )
        return np.asarray(result.images[0])

    def run_theirs() -> np.ndarray:
        result = theirs(
            prompt=prompt,
            image=image,
            num_inference_steps=steps,
            guidance_scale=7.5,
            image_guidance_scale=1.5,
            generator=torch.Generator("cpu").manual_seed(seed),
        )
        return np.asarray(result.images[0])

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    warm_ours, out_ours = timed(run_ours)  # warm-up (allocator, oneDNN primitives): not counted
    warm_theirs, out_theirs = timed(run_theirs)
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(repeats):  # A B A B ...
        times["ours"].append(timed(run_ours)[0])
        times["diffusers"].append(timed(run_theirs)[0])

    med_ours, med_theirs = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    pixel_diff = int(np.abs(out_ours.astype(np.int16) - out_theirs.astype(np.int16)).max())
    return dict(
        config=name,
        resolution=size,
        steps=steps,
        dtype=str(ours.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        repeats=repeats,
        build_s=round(build_s, 2),
        params_millions={
            k: round(params_millions(getattr(components, k)), 1) for k in ("unet", "vae", "text_encoder")
        },
        warmup_s={"ours": warm_ours, "diffusers": warm_theirs},
        times_s=times,
        median_s={"ours": med_ours, "diffusers": med_theirs},
        min_s={"ours": min(times["ours"]), "diffusers": min(times["diffusers"])},
        ratio_median=med_ours / med_theirs,
        ratio_min=min(times["ours"]) / min(times["diffusers"]),
        max_pixel_diff_same_seed=pixel_diff,
    )


def markdown(rows: list[dict]) -> str:
    lines = [
        "| config | px | steps | dtype | threads | runs | ours s/edit | diffusers s/edit | ours/diffusers "
        "| ratio of fastest runs | bar |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ok = "ok" if r["ratio_median"] <= BAR else "SLOWER"
        lines.append(
            f"| {r['config']} | {r['resolution']} | {r['steps']} | {r['dtype']} | {r['threads']} | {r['repeats']} | "
            f"{r['median_s']['ours']:.3f} | {r['median_s']['diffusers']:.3f} | {r['ratio_median']:.3f} | "
            f"{r['ratio_min']:.3f} | {ok} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,sd15", help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per pipeline (default: tiny 10, sd15 2), after one warm-up run each",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for every config (default: tiny 1, sd15 torch's own)",
    )
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            parser.error(f"unknown config {n!r}; choose from {', '.join(CONFIGS)}")

    import diffusers
    import transformers

    rows = []
    for n in names:
        print(f"[bench_edit] {n} ...", file=sys.stderr, flush=True)
        load_before = os.getloadavg()
        row = bench(n, args.repeats, args.dtype, args.threads)
        row.update(
            when=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            note=args.note,
            loadavg_before=load_before,
            loadavg_after=os.getloadavg(),
        )
        rows.append(row)
    # Keep earlier results of other (config, dtype) pairs in the file; replace those measured now.
    previous = json.loads(args.out.read_text()).get("results", []) if args.out.is_file() else []
    measured = {(r["config"], r["dtype"]) for r in rows}
    kept = [r for r in previous if (r.get("config"), r.get("dtype")) not in measured]
    report = dict(
        benchmark="bench_edit",
        bar_ratio=BAR,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        versions=dict(
            python=platform.python_version(),
            torch=torch.__version__,
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
        ),
        results=kept + rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows))
    for r in rows:
        print(
            f"{r['config']}: load average {r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after; "
            f"same-seed outputs differ by at most {r['max_pixel_diff_same_seed']}/255"
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
