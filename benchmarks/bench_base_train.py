"""The toy base's training steps (`ip2p toy train-base`, stages "unet" and "clip") under each precision and attention
kernel, side by side on this machine: seconds a step and the ratio to the first variant, for the CPU recipe's budget
(docs/benchmarks.md).

A variant is PRECISION:ATTENTION, the stage's `--unet-precision`/`--clip-precision` (fp32 or bf16 autocast) and
`--attention` (sdpa: torch's scaled_dot_product_attention; classic: diffusers' AttnProcessor, transformers' eager
attention). Each round runs STEPS steps of every variant in turn, so all see the same machine load; the variants
start from the same weights and see the same batches. The steps repeat the stages' (closures inside `train_unet` and
`train_clip`): for the UNet, the bundled base's frozen text encoder on a batch of captions, v-prediction over the toy
scheduler, AdamW, gradient clipping and an EMA update, on latents as the stage caches them (not rendered); for CLIP,
a batch of the stage (scenes, one-attribute variants, hard-negative captions) through both towers, the contrastive
and attribute-head losses, AdamW and clipping.

    python benchmarks/bench_base_train.py --stage clip --batch 128 --threads 1
    python benchmarks/bench_base_train.py --stage unet --batch 128 --variants fp32:sdpa,bf16:sdpa,bf16:classic
    python benchmarks/bench_base_train.py --batch 256 --device cuda --variants fp32:sdpa,bf16:sdpa
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
import torch.nn.functional as F


def unet_step_fns(variants: list[str], batch: int, device: torch.device):
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from ip2p.toy.base.common import use_attention
    from ip2p.toy.captions import caption
    from ip2p.toy.models import build_scheduler, build_unet, preset
    from ip2p.toy.plugin import toy_model_path
    from ip2p.toy.scene import random_scene

    base = toy_model_path("base")
    cfg = preset("toy")
    tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
    scheduler = DDPMScheduler.from_config(build_scheduler(cfg.scheduler).config)
    rng = random.Random(0)
    g = torch.Generator().manual_seed(0)
    texts = [caption(random_scene(rng), rng) for _ in range(batch)]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    ids = ids.input_ids.to(device)
    x0 = torch.randn(batch, 4, 16, 16, generator=g).to(device)
    first = None
    fns = {}
    for variant in variants:
        precision, attention = variant.split(":")
        text_encoder = (
            CLIPTextModel.from_pretrained(base / "text_encoder").to(device).eval().requires_grad_(False)
        )
        if first is None:
            first = build_unet(cfg.unet, text_encoder.config.hidden_size, seed=0).to(device).train()
        model = use_attention(copy.deepcopy(first), attention)
        use_attention(text_encoder, attention)
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.01)
        ema = {n: v.detach().clone() for n, v in model.state_dict().items() if v.is_floating_point()}

        def step(model=model, opt=opt, ema=ema, text_encoder=text_encoder, precision=precision) -> float:
            noise = torch.randn(x0.shape, generator=g).to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=g).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
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

        fns[variant] = step
    return fns


def clip_step_fns(variants: list[str], batch: int, hard: int, device: torch.device):
    from transformers import CLIPTokenizer

    from ip2p.toy.base import clip as tb
    from ip2p.toy.base.config import TrainSettings
    from ip2p.toy.data import training_scenes
    from ip2p.toy.models import build_clip, preset
    from ip2p.toy.plugin import toy_model_path

    cfg = preset("toy")
    tokenizer = CLIPTokenizer.from_pretrained(toy_model_path("clip"))
    settings = TrainSettings(clip_batch=batch, clip_hard_captions=hard)
    make = tb.clip_batch_maker(training_scenes(2000, 0), tokenizer, settings, "clip", text_targets=True)
    batches = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in make(i).items()} for i in range(4)
    ]
    fns = {}
    for variant in variants:
        precision, attention = variant.split(":")
        clip = tb.use_attention(build_clip(cfg.clip, tokenizer, seed=0).to(device).train(), attention)
        heads = tb.AttributeHeads(cfg.clip.projection_dim).to(device)
        params = [*clip.parameters(), *heads.parameters()]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
        counter = [0]

        def step(
            clip=clip, heads=heads, params=params, opt=opt, precision=precision, counter=counter
        ) -> float:
            b = batches[counter[0] % len(batches)]
            counter[0] += 1
            n = b["n_captions"]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                image_emb = tb.image_embeddings(clip, b["pixels"])
                text_emb = tb.text_embeddings_of_ids(clip, b["ids"])
            loss = tb.clip_loss(clip, image_emb, text_emb[:n], text_emb[n:], b["same"])
            loss = loss + heads.loss(heads.read_image(image_emb), b["image_targets"])
            loss = loss + heads.loss(heads.read_text(text_emb), b["text_targets"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            return float(loss)

        fns[variant] = step
    return fns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=("unet", "clip"), default="unet")
    parser.add_argument(
        "--variants",
        default="fp32:sdpa,bf16:sdpa,bf16:classic",
        help="comma-separated PRECISION:ATTENTION; ratios are to the first",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="latents (unet) or scenes (clip) per step")
    parser.add_argument("--hard", type=int, default=4, help="clip: hard-negative captions per scene")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        precision, _, attention = v.partition(":")
        if precision not in ("fp32", "bf16") or attention not in ("sdpa", "classic"):
            parser.error(f"a variant is fp32|bf16:sdpa|classic, not {v!r}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.stage == "unet":
        fns = unet_step_fns(variants, args.batch, device)
    else:
        fns = clip_step_fns(variants, args.batch, args.hard, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in fns.values():  # warm-up: kernels, allocator
        for _ in range(2):
            fn()
    seconds = {k: 0.0 for k in fns}
    losses = {k: 0.0 for k in fns}
    for r in range(args.rounds):
        for kind, fn in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                losses[kind] = fn()
            sync()
            seconds[kind] += time.perf_counter() - start
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k} {seconds[k] / ((r + 1) * args.steps):.3f} s/step" for k in fns)
        )
    n = args.rounds * args.steps
    ref = variants[0]
    print(f"\ntoy base {args.stage}, batch {args.batch}, {args.threads} threads, {device}:")
    for kind in fns:
        print(
            f"  {kind:13} {seconds[kind] / n:.3f} s/step, last loss {losses[kind]:.3f}, "
            f"{seconds[ref] / seconds[kind]:.2f}x {ref}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
