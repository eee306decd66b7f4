"""Peak memory and samples/s of one training step of an SD-1.5-architecture editing UNet, per training setup.

Setups (each cumulative where its name says so), all set up by ip2p's own code (``ip2p.train_lora.add_lora``,
``ip2p.train_optim.build_optimizer``, diffusers' gradient checkpointing), as ``ip2p train`` sets them up:

    full               every UNet weight trains, torch's AdamW (fp32 moments)
    full+gc            + gradient checkpointing (--gradient-checkpointing)
    full+gc+adamw8bit  + bitsandbytes' 8-bit AdamW (--optimizer adamw8bit)
    lora64             LoRA rank 64 on the attention projections, the 8-channel input convolution in full
                       (--lora-rank 64 from a text-to-image model), torch's AdamW
    lora64+gc          + gradient checkpointing

The UNet (SD-1.5's architecture with 8 input channels, random weights, 859.5M parameters) trains on random latents
of the resolution's size and random 77 x 768 text states: the frozen VAE and text encoder, which ``ip2p train``
also holds (0.2 GB in fp16 on a GPU), are left out. Each setup runs in a fresh process: one warm-up step (the
optimizer allocates its state), then ``--steps`` timed steps. Reported: peak memory (CPU: the process's resident
high-water mark, VmHWM; CUDA: ``torch.cuda.max_memory_allocated``), samples/s, and both against ``full``. On the
CPU a setup whose weights, gradients and optimizer state alone exceed the memory available is skipped and says so.

Usage:
    python benchmarks/bench_train_memory.py [--batches 1,4] [--resolution 256] [--steps 2] [--configs ...]
    python benchmarks/bench_train_memory.py --device cuda --precision bf16     # on a GPU machine
    python benchmarks/bench_train_memory.py --tiny                            # the tiny UNet, seconds (tests)

Writes a markdown table to stdout and everything to ``benchmarks/results/bench_train_memory[-cuda].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download

RESULTS = Path(__file__).parent / "results"
SETUPS = {
    "full": dict(),
    "full+gc": dict(gradient_checkpointing=True),
    "full+gc+adamw8bit": dict(gradient_checkpointing=True, optimizer="adamw8bit"),
    "lora64": dict(lora_rank=64),
    "lora64+gc": dict(lora_rank=64, gradient_checkpointing=True),
}
MARGIN_GIB = 6.0  # left free for the activations (and for the machine's other processes) on the CPU
# bytes per trained weight beside the weight itself (4): its gradient (4) and the optimizer's two moments
STATE_BYTES = {"adamw": 4 + 8, "adamw8bit": 4 + 2}


def unet_config(tiny: bool) -> dict:
    if tiny:
        from ip2p.tiny import tiny_components

        return dict(tiny_components(edit=True).unet.config)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_edit import SD15_UNET

    return dict(SD15_UNET)


def build(setup: str, tiny: bool, device: str):
    """(UNet, optimizer, trainable parameter count) of ``setup``, on ``device``."""
    import torch
    from diffusers import UNet2DConditionModel

    from ip2p.train_config import DEFAULT_LORA_TARGETS, TrainConfig
    from ip2p.train_lora import add_lora, trainable_parameters
    from ip2p.train_optim import build_optimizer

    spec = SETUPS[setup]
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(unet_config(tiny)).to(device).train()
    if spec.get("lora_rank"):
        add_lora(unet, spec["lora_rank"], None, DEFAULT_LORA_TARGETS, train_conv_in=True, seed=0)
    if spec.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    config = TrainConfig(data=["-"], optimizer=spec.get("optimizer", "adamw"))
    params = trainable_parameters(unet)
    optimizer = build_optimizer(params, config, torch.device(device))
    return unet, optimizer, sum(p.numel() for p in params)


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux: VmHWM; see bench_memory.py)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(args: argparse.Namespace) -> int:
    """One setup in this process: build, one warm-up step, ``steps`` timed steps; prints one JSON line."""
    import torch
    import torch.nn.functional as F

    from ip2p.train_optim import OptimizerError

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    try:
        unet, optimizer, trainable = build(args.setup, args.tiny, device)
    except OptimizerError as exc:
        print(json.dumps(dict(status=f"unavailable: {exc}")))
        return 0
    cfg = unet.config
    side = args.resolution // 8  # the VAE's factor
    generator = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device) if dtype == torch.float16 else None

    def step():
        x = draw(args.batch, cfg.in_channels, side, side)  # (B, 8, r/8, r/8): noisy latent + image latent
        text = draw(args.batch, 77, cfg.cross_attention_dim)  # (B, 77, D)
        target = draw(args.batch, cfg.out_channels, side, side)
        t = torch.randint(0, 1000, (args.batch,), generator=generator).to(device)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            loss = F.mse_loss(unet(x, t, encoder_hidden_states=text).sample.float(), target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up: the optimizer allocates its state
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else peak_rss_gib()
    print(
        json.dumps(
            dict(
                status="ok",
                peak_gib=peak,
                samples_per_s=args.batch * args.steps / seconds,
                step_s=seconds / args.steps,
                trainable_millions=trainable / 1e6,
                params_millions=sum(p.numel() for p in unet.parameters()) / 1e6,
                threads=torch.get_num_threads(),
            )
        )
    )
    return 0


def static_need_gib(setup: str, tiny: bool) -> float:
    """Weights, gradients and optimizer state of ``setup`` in fp32, from the parameter count (meta tensors)."""
    import torch
    from diffusers import UNet2DConditionModel

    config = unet_config(tiny)  # built outside the meta context: the tiny model's factory makes real tensors
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    total = sum(p.numel() for p in unet.parameters())
    spec = SETUPS[setup]
    trained = unet.conv_in.weight.numel() if spec.get("lora_rank") else total  # LoRA's own weights: small
    return (4 * total + STATE_BYTES[spec.get("optimizer", "adamw")] * trained) / 2**30


def available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def measure(setup: str, batch: int, args: argparse.Namespace) -> dict:
    if args.device == "cpu":
        need, free = static_need_gib(setup, args.tiny), available_gib()
        if free is not None and need > free - MARGIN_GIB:
            return dict(status=f"skipped: needs {need:.1f} GiB before activations, {free:.1f} GiB available")
    command = [sys.executable, __file__, "--worker", "--setup", setup, "--batch", str(batch)]
    command += ["--resolution", str(args.resolution), "--steps", str(args.steps), "--device", args.device]
    command += ["--precision", args.precision] + (["--tiny"] if args.tiny else [])
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(status=f"failed (exit {done.returncode}): {tail[:200]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], device: str) -> str:
    memory = "peak VRAM GiB" if device.startswith("cuda") else "peak RSS GiB"
    lines = [
        f"| setup | batch | px | trained M | {memory} | memory / full | samples/s | samples/s / full |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['setup']} | {r['batch']} | {r['resolution']} | - | {r['status']} | - | - | - |"
            )
            continue
        memory_ratio, speed_ratio = (
            f"{r[key]:.2f}" if r.get(key) is not None else "-" for key in ("memory_vs_full", "speed_vs_full")
        )
        lines.append(
            f"| {r['setup']} | {r['batch']} | {r['resolution']} | {r['trainable_millions']:.1f} | "
            f"{r['peak_gib']:.2f} | {memory_ratio} | {r['samples_per_s']:.3f} | {speed_ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="full,full+gc,full+gc+adamw8bit,lora64", help=", ".join(SETUPS))
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--resolution", type=int, default=256, help="image side in pixels (latents: 1/8)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--precision", default="no", choices=("no", "bf16", "fp16"), help="autocast dtype (fp32 weights)"
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny test UNet instead of SD-1.5's")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    setups = [s.strip() for s in args.configs.split(",") if s.strip()]
    for s in setups:
        if s not in SETUPS:
            parser.error(f"unknown setup {s!r}; choose from {', '.join(SETUPS)}")
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches: expected integers separated by commas, got {args.batches!r}")

    import torch

    rows = []
    started = time.perf_counter()
    for batch in batches:
        reference = None
        for setup in setups:
            row = dict(setup=setup, batch=batch, resolution=args.resolution, device=args.device)
            row.update(measure(setup, batch, args), loadavg=os.getloadavg())
            if setup == "full" and row["status"] == "ok":
                reference = row
            if row["status"] == "ok" and reference is not None:
                row["memory_vs_full"] = row["peak_gib"] / reference["peak_gib"]
                row["speed_vs_full"] = row["samples_per_s"] / reference["samples_per_s"]
            print(f"[bench_train_memory] {row}", file=sys.stderr, flush=True)
            rows.append(row)
    report = dict(
        benchmark="bench_train_memory",
        note=args.note,
        tiny=args.tiny,
        precision=args.precision,
        steps=args.steps,
        total_s=time.perf_counter() - started,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count()),
        versions=dict(python=platform.python_version(), torch=torch.__version__),
        results=rows,
    )
    out = args.out or RESULTS / f"bench_train_memory{'' if args.device == 'cpu' else '-' + args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows, args.device))
    print(f"total {report['total_s']:.0f} s; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
