"""The toy editor's training step with torch's SDPA attention and with diffusers' classic AttnProcessor, side by
side on this machine: seconds a step and the ratio (`ip2p train --attention`, docs/benchmarks.md).

Both trainers are `ip2p.train.Trainer` with `scripts/toy_editor.sh`'s recipe (the toy preset from the bundled toy
base, cached latents, posterior-mean targets, bf16 autocast, cosine 1e-3, the noisy-timestep bias, EMA), on the
same rendered pairs; each round times STEPS steps of one, then of the other, so both see the same machine load.
The toy UNet's heads have 4 dimensions (32 of them over 128 channels), where torch's CPU flash-attention kernel
is slow; the classic processor computes the same softmax(QK^T/sqrt(d))V as batched matrix products.

    python benchmarks/bench_attention.py --steps 10 --rounds 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_train import make_data  # same folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per kernel and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=256, help="rendered training pairs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CPU recipe's: 2)")
    parser.add_argument("--device", default="cpu", help="cpu, or auto for accelerate's choice")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ip2p.train import ATTENTIONS, Trainer, apply_preset

    tmp = Path(tempfile.mkdtemp(prefix="bench-attention-"))
    data = make_data(tmp, args.pairs, 64)
    trainers = {}
    for kind in ATTENTIONS:
        config = apply_preset(
            "toy",
            dict(
                base_model="toy",
                data=[data],
                output_dir=str(tmp / kind),
                cache_latents=True,
                latent_target="mean",
                mixed_precision="bf16",
                learning_rate=1e-3,
                lr_schedule="cosine",
                lr_warmup_steps=200,
                timestep_bias="later",
                timestep_bias_multiplier=3,
                timestep_bias_portion=0.3,
                max_train_steps=8800,
                attention=kind,
                device=args.device,
            ),
        )
        trainer = Trainer(config)
        trainer.out.mkdir(parents=True, exist_ok=True)
        trainer.build_cache()
        trainers[kind] = trainer

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for trainer in trainers.values():  # warm-up: kernels, allocator
        for _ in range(3):
            trainer.train_step()
    seconds = dict.fromkeys(trainers, 0.0)
    losses = dict.fromkeys(trainers, 0.0)
    for r in range(args.rounds):
        for kind, trainer in trainers.items():
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                losses[kind] = trainer.train_step()
            sync()
            seconds[kind] += time.perf_counter() - start
        done = (r + 1) * args.steps
        print(f"round {r + 1}: " + ", ".join(f"{k} {s / done:.3f} s/step" for k, s in seconds.items()))
    n = args.rounds * args.steps
    device = next(iter(trainers.values())).accelerator.device
    print(f"\ntoy editor training step (toy_editor.sh's recipe), batch 32, {args.threads} threads, {device}:")
    for kind in trainers:
        print(f"  {kind}: {seconds[kind] / n:.3f} s/step, last loss {losses[kind]:.4f}")
    print(f"  classic speed-up over sdpa: {seconds['sdpa'] / seconds['classic']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
