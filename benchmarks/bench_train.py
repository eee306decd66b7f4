"""Training throughput: `ip2p train` vs the training step of diffusers' examples/instruct_pix2pix, side by side.

diffusers' `train_instruct_pix2pix.py` is not in its installed package or source distribution, and it imports
torchvision, which cannot be installed beside the CPU torch build our machines use. So the reference here is an
equivalent minimal loop that does per step exactly what that script does: preprocess the batch's images, encode
the edited images (posterior sample) and the input images (mode) with the VAE, encode the instructions *and* the
empty prompt with the text encoder, draw the dropout masks, run the UNet, back-propagate, clip, step AdamW, step
the EMA. `--diffusers-script PATH` is accepted for machines where the script and torchvision are available; it
is then only reported, not timed here.

Both sides use the same tiny model, data, batch size and number of steps; runs alternate (reference, ours,
ours with the latent cache) after a warm-up, and the medians are compared.

    python benchmarks/bench_train.py --steps 8 --batch 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def make_data(folder: Path, n: int, size: int) -> str:
    from ip2p.datasets import write_parquet_shard
    from ip2p.toy import random_edit, random_scene, render

    rng = random.Random(0)
    rows = []
    for _ in range(n):
        scene = random_scene(rng)
        edit = random_edit(scene, rng)
        rows.append(
            {
                "original_image": render(scene, size=size),
                "edit_prompt": edit.instruction,
                "edited_image": render(edit.after, size=size),
            }
        )
    return str(write_parquet_shard(rows, folder / "pairs.parquet"))


def make_base(folder: Path) -> str:
    from diffusers import StableDiffusionPipeline

    from ip2p.tiny import tiny_components

    c = tiny_components(edit=False)
    StableDiffusionPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=c.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder / "base")
    return str(folder / "base")


def reference_loop(base: str, data: str, steps: int, batch: int, size: int) -> float:
    """Samples per second of the diffusers example's training step (see the module docstring)."""
    import numpy as np
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.training_utils import EMAModel

    from ip2p.datasets import open_edit_dataset
    from ip2p.models import to_edit_unet

    pipe = StableDiffusionPipeline.from_pretrained(
        base, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    unet, vae, text_encoder, tokenizer = (
        to_edit_unet(pipe.unet).train(),
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
    )
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=1e-2)
    ema = EMAModel(unet.parameters())
    dataset = open_edit_dataset(data)
    generator = torch.Generator().manual_seed(0)

    def tokenize(texts):
        return tokenizer(
            texts,
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def preprocess(indices):
        # The script: resize to the resolution, crop, flip, to [-1, 1], per example.
        originals, editeds = [], []
        for i in indices:
            ex = dataset[i]
            o = np.asarray(ex.original_image.resize((size, size)), dtype=np.float32) / 127.5 - 1
            e = np.asarray(ex.edited_image.resize((size, size)), dtype=np.float32) / 127.5 - 1
            if random.random() < 0.5:
                o, e = o[:, ::-1], e[:, ::-1]
            originals.append(torch.from_numpy(o.copy()).permute(2, 0, 1))
            editeds.append(torch.from_numpy(e.copy()).permute(2, 0, 1))
        return (
            torch.stack(originals),
            torch.stack(editeds),
            tokenize([dataset[i].edit_prompt for i in indices]),
        )

    def step(k):
        indices = [(k * batch + j) % len(dataset) for j in range(batch)]
        original, edited, ids = preprocess(indices)
        latents = vae.encode(edited).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(ids)[0]
        image_embeds = vae.encode(original).latent_dist.mode()
        random_p = torch.rand(batch, generator=generator)
        null = text_encoder(tokenize([""]))[0]
        hidden = torch.where((random_p < 0.1).reshape(batch, 1, 1), null, hidden)
        mask = 1 - ((random_p >= 0.05).float() * (random_p < 0.15).float())
        image_embeds = mask.reshape(batch, 1, 1, 1) * image_embeds
        pred = unet(torch.cat([noisy, image_embeds], dim=1), timesteps, hidden).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        ema.step(unet.parameters())

    step(0)  # warm-up
    start = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    return steps * batch / (time.perf_counter() - start)


def ours(base: str, data: str, steps: int, batch: int, size: int, cache: bool, out: Path) -> float:
    from ip2p.train import TrainConfig, Trainer

    config = TrainConfig(
        base_model=base,
        data=[data],
        output_dir=str(out),
        resolution=size,
        min_resize=size,
        max_resize=size,
        train_batch_size=batch,
        max_train_steps=steps + 1,
        device="cpu",
        cache_latents=cache,
        checkpointing_steps=10**9,
        validation_steps=0,
    )
    trainer = Trainer(config)
    if cache:
        trainer.build_cache()  # once per dataset; reported separately below
    trainer.train_step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--batch", type=int, default=16, help="examples per step")
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per contender")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--diffusers-script", default=None, help="path of diffusers' script, if available")
    parser.add_argument("--out", default="benchmarks/results/bench_train.json", help="JSON results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, data = make_base(tmp), make_data(tmp, n=4 * args.batch, size=args.size)
        results: dict[str, list[float]] = {
            "reference (diffusers example's step)": [],
            "ip2p train": [],
            "ip2p train --cache-latents": [],
        }
        cache_start = time.perf_counter()
        ours(base, data, 1, args.batch, args.size, True, tmp / "cache-run")  # builds the cache once
        cache_seconds = time.perf_counter() - cache_start
        for r in range(args.repeats):
            results["reference (diffusers example's step)"].append(
                reference_loop(base, data, args.steps, args.batch, args.size)
            )
            results["ip2p train"].append(
                ours(base, data, args.steps, args.batch, args.size, False, tmp / f"a{r}")
            )
            results["ip2p train --cache-latents"].append(
                ours(base, data, args.steps, args.batch, args.size, True, tmp / "cache-run")
            )
    ref = statistics.median(results["reference (diffusers example's step)"])
    print(
        f"\n{args.steps} steps x batch {args.batch} at {args.size} px, tiny model, {args.threads} threads, "
        f"median of {args.repeats}"
    )
    print("| contender | samples/s | ratio to reference |\n| --- | --- | --- |")
    summary = {}
    for name, values in results.items():
        median = statistics.median(values)
        summary[name] = {"samples_per_second": median, "ratio": median / ref, "runs": values}
        print(f"| {name} | {median:.1f} | {median / ref:.2f} |")
    print(
        f"(building the latent cache: {cache_seconds:.1f} s for {4 * args.batch} examples, once per dataset)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"settings": vars(args), "results": summary, "cache_build_seconds": cache_seconds}, indent=2
        )
    )


if __name__ == "__main__":
    main()
