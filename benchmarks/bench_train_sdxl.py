"""SDXL training throughput: `ip2p train` (with and without the latent cache) vs the training step of diffusers'
examples/instruct_pix2pix/train_instruct_pix2pix_sdxl.py, side by side on the same tiny SDXL components.

As in bench_train.py, the script itself needs torchvision and a hub dataset, so the reference is a minimal loop
that does per step what it does: its data transform encodes each instruction on its own through both text
encoders (with the untruncated tokenization it compares against, to warn), the VAE (fp32, its default
``--vae_precision``) encodes the edited images and the input images (posterior samples), the text is dropped to
the null conditioning computed once before the loop, the image by the mask, the UNet runs with the pooled text and
the size ids computed once, then back-propagation, clipping, AdamW and EMA.

Both sides start from the same SDXL text-to-image folder, data, batch size and number of steps; runs alternate
(reference, ours, ours with the latent cache) after a warm-up, and the medians are compared. Each run is timed in
wall seconds and in the CPU seconds of this process (``time.process_time``), which a machine shared with other
jobs disturbs far less; both are reported.

    python benchmarks/bench_train_sdxl.py --steps 8 --batch 16 --repeats 3
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
from bench_train import make_data


def timed(step, steps: int, batch: int) -> tuple[float, float]:
    """Samples per wall second and per CPU second of ``steps`` calls of ``step(k)``, after one warm-up call."""
    step(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(1, steps + 1):
        step(k)
    return steps * batch / (time.perf_counter() - wall), steps * batch / (time.process_time() - cpu)


def make_sdxl_base(folder: Path) -> str:
    """The tiny SDXL text-to-image model (4-channel UNet) as a StableDiffusionXLPipeline folder."""
    from diffusers import StableDiffusionXLPipeline

    from ip2p.models import build_pipeline
    from ip2p.tiny import tiny_sdxl_components

    build_pipeline(StableDiffusionXLPipeline, tiny_sdxl_components(edit=False)).save_pretrained(
        folder / "base"
    )
    return str(folder / "base")


def reference_loop(base: str, data: str, steps: int, batch: int, size: int) -> tuple[float, float]:
    """Samples per second of the diffusers SDXL example's training step (see the module docstring)."""
    import numpy as np
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline
    from diffusers.training_utils import EMAModel

    from ip2p.datasets import open_edit_dataset
    from ip2p.models import to_edit_unet

    pipe = StableDiffusionXLPipeline.from_pretrained(base, add_watermarker=False)
    unet, vae = to_edit_unet(pipe.unet).train(), pipe.vae
    tokenizers, text_encoders = [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2]
    for frozen in (vae, *text_encoders):
        frozen.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, weight_decay=1e-2)
    ema = EMAModel(unet.parameters())
    dataset = open_edit_dataset(data)
    generator = torch.Generator().manual_seed(0)

    def tokenize(texts, tokenizer):
        return tokenizer(
            texts,
            max_length=tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def encode_prompt(prompt):  # the script's encode_prompt: one prompt, both encoders
        states = []
        for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
            ids = tokenize(prompt, tokenizer)
            untruncated = tokenizer(prompt, padding="longest", return_tensors="pt").input_ids
            if untruncated.shape[-1] >= ids.shape[-1] and not torch.equal(ids, untruncated):
                tokenizer.batch_decode(
                    untruncated[:, tokenizer.model_max_length - 1 : -1]
                )  # the script logs this
            out = encoder(ids, output_hidden_states=True)
            pooled = out[0]
            states.append(out.hidden_states[-2])
        return torch.concat(states, dim=-1), pooled.view(1, -1)

    @torch.no_grad()
    def null_conditioning():
        return torch.concat(
            [
                encoder(tokenize([""], tokenizer), output_hidden_states=True).hidden_states[-2]
                for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True)
            ],
            dim=-1,
        )

    null = null_conditioning()
    add_time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32).repeat(batch, 1)

    def preprocess(indices):
        # The script's transform: images resized, cropped, flipped, to [-1, 1]; each prompt encoded on its own.
        originals, editeds, texts, pooled = [], [], [], []
        for i in indices:
            ex = dataset[i]
            o = np.asarray(ex.original_image.resize((size, size)), dtype=np.float32) / 127.5 - 1
            e = np.asarray(ex.edited_image.resize((size, size)), dtype=np.float32) / 127.5 - 1
            if random.random() < 0.5:
                o, e = o[:, ::-1], e[:, ::-1]
            originals.append(torch.from_numpy(o.copy()).permute(2, 0, 1))
            editeds.append(torch.from_numpy(e.copy()).permute(2, 0, 1))
            hidden, pool = encode_prompt([ex.edit_prompt])
            texts.append(hidden)
            pooled.append(pool)
        return torch.stack(originals), torch.stack(editeds), torch.cat(texts), torch.cat(pooled)

    def step(k):
        indices = [(k * batch + j) % len(dataset) for j in range(batch)]
        original, edited, hidden, pooled = preprocess(indices)
        latents = vae.encode(edited).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        image_embeds = vae.encode(original).latent_dist.sample()
        random_p = torch.rand(batch, generator=generator)
        hidden = torch.where((random_p < 0.1).reshape(batch, 1, 1), null, hidden)
        mask = 1 - ((random_p >= 0.05).float() * (random_p < 0.15).float())
        image_embeds = mask.reshape(batch, 1, 1, 1) * image_embeds
        added = {"text_embeds": pooled, "time_ids": add_time_ids}
        pred = unet(
            torch.cat([noisy, image_embeds], dim=1), timesteps, hidden, added_cond_kwargs=added
        ).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        ema.step(unet.parameters())

    return timed(step, steps, batch)


def ours(
    base: str, data: str, steps: int, batch: int, size: int, cache: bool, out: Path
) -> tuple[float, float]:
    """Samples per wall and CPU second of ``Trainer.train_step`` (bench_train.py's settings)."""
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
        trainer.build_cache()  # once per dataset; reported separately
    return timed(lambda k: trainer.train_step(), steps, batch)


REFERENCE = "reference (diffusers SDXL example's step)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--batch", type=int, default=16, help="examples per step")
    parser.add_argument("--size", type=int, default=64, help="image side")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per contender")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="benchmarks/results/bench_train_sdxl.json", help="JSON results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base, data = make_sdxl_base(tmp), make_data(tmp, n=4 * args.batch, size=args.size)
        results: dict[str, list[tuple[float, float]]] = {
            REFERENCE: [],
            "ip2p train": [],
            "ip2p train --cache-latents": [],
        }
        cache_start = time.perf_counter()
        ours(base, data, 1, args.batch, args.size, True, tmp / "cache-run")  # builds the cache once
        cache_seconds = time.perf_counter() - cache_start
        for r in range(args.repeats):
            results[REFERENCE].append(reference_loop(base, data, args.steps, args.batch, args.size))
            results["ip2p train"].append(
                ours(base, data, args.steps, args.batch, args.size, False, tmp / f"a{r}")
            )
            results["ip2p train --cache-latents"].append(
                ours(base, data, args.steps, args.batch, args.size, True, tmp / "cache-run")
            )
    ref_wall = statistics.median(w for w, _ in results[REFERENCE])
    ref_cpu = statistics.median(c for _, c in results[REFERENCE])
    print(
        f"\n{args.steps} steps x batch {args.batch} at {args.size} px, tiny SDXL model, {args.threads} threads, "
        f"median of {args.repeats}"
    )
    print(
        "| contender | samples per wall second | ratio | samples per CPU second | ratio |\n"
        "| --- | --- | --- | --- | --- |"
    )
    summary = {}
    for name, values in results.items():
        wall, cpu = statistics.median(w for w, _ in values), statistics.median(c for _, c in values)
        summary[name] = {
            "samples_per_second": wall,
            "ratio": wall / ref_wall,
            "samples_per_cpu_second": cpu,
            "cpu_ratio": cpu / ref_cpu,
            "runs": values,
        }
        print(f"| {name} | {wall:.2f} | {wall / ref_wall:.2f} | {cpu:.2f} | {cpu / ref_cpu:.2f} |")
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
