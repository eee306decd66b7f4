"""The toy base UNet's training step (`ip2p toy train-base`, stage "unet") in fp32 and under bf16 autocast, side by
side on this machine: seconds a step and the ratio, for the CPU recipe's budget (README, the toy world).

Each round runs STEPS steps of the fp32 model, then STEPS of the bf16 one, so both see the same machine load; the
two models start from the same weights and see the same batches. The step repeats the stage's (which is a closure
inside `train_unet`): the frozen text encoder of the bundled base on a batch of captions, v-prediction over the toy
scheduler, AdamW, gradient clipping and an EMA update; scenes are not rendered (the stage takes cached latents).

    python benchmarks/bench_base_train.py --steps 10 --rounds 3
    python benchmarks/bench_base_train.py --batch 256 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
import torch.nn.functional as F


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per dtype and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="latents per step (the CPU recipe's: 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CPU recipe's: 2)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from ip2p.models import toy_model_path
    from ip2p.toy.captions import caption
    from ip2p.toy.models import build_scheduler, build_unet, preset
    from ip2p.toy.scene import random_scene

    base = toy_model_path("base")
    cfg = preset("toy")
    text_encoder = (
        CLIPTextModel.from_pretrained(base / "text_encoder").to(device).eval().requires_grad_(False)
    )
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    scheduler = DDPMScheduler.from_config(build_scheduler(cfg.scheduler).config)
    fp32 = build_unet(cfg.unet, text_encoder.config.hidden_size, seed=0).to(device).train()
    models = {"fp32": fp32, "bf16": copy.deepcopy(fp32)}
    optims = {k: torch.optim.AdamW(m.parameters(), lr=6e-4, weight_decay=0.01) for k, m in models.items()}
    emas = {
        k: {n: v.detach().clone() for n, v in m.state_dict().items() if v.is_floating_point()}
        for k, m in models.items()
    }

    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    texts = [caption(random_scene(rng), rng) for _ in range(args.batch)]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    ids = ids.input_ids.to(device)
    x0 = torch.randn(args.batch, 4, 16, 16, generator=g).to(device)

    def step(kind: str) -> float:
        model, opt, ema = models[kind], optims[kind], emas[kind]
        noise = torch.randn(x0.shape, generator=g).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=g).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=kind == "bf16"):
            with torch.no_grad():
                cond = text_encoder(ids)[0]
            pred = model(scheduler.add_noise(x0, noise, t), t, cond).sample
        loss = F.mse_loss(pred.float(), scheduler.get_velocity(x0, noise, t).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            current = model.state_dict()
            torch._foreach_lerp_(list(ema.values()), [current[k] for k in ema], 0.001)
        return float(loss)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for kind in models:  # warm-up: kernels, allocator
        for _ in range(2):
            step(kind)
    seconds = {k: 0.0 for k in models}
    losses = {k: 0.0 for k in models}
    for r in range(args.rounds):
        for kind in models:
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                losses[kind] = step(kind)
            sync()
            seconds[kind] += time.perf_counter() - start
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k} {seconds[k] / ((r + 1) * args.steps):.3f} s/step" for k in models)
        )
    n = args.rounds * args.steps
    print(f"\ntoy base UNet, batch {args.batch}, {args.threads} threads, {device}:")
    for kind in models:
        print(f"  {kind}: {seconds[kind] / n:.3f} s/step, last loss {losses[kind]:.3f}")
    print(f"  bf16 speed-up over fp32: {seconds['fp32'] / seconds['bf16']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
