"""Stage "vae": the autoencoder trained on renders (MSE reconstruction + a small KL term), and the optional stage
"vae_decoder": its decoder alone fine-tuned afterwards (SD's ft-MSE recipe), leaving the latent space as it was."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ip2p.fileio import write_json_atomic
from ip2p.harness import Checkpointer, prefixed, run_steps, unprefixed

from ..data import load_dataset, to_tensor
from ..models import BaseModelConfig, build_vae, count_parameters
from .common import (
    base_final_path,
    current_vae_path,
    lr_at,
    save_pretrained_atomic,
    settings_record,
    step_seed,
    vae_decoder_path,
    vae_final_path,
)
from .config import TrainSettings


def train_vae(out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device) -> Path:
    """Train the autoencoder (MSE reconstruction + ``vae_kl_weight`` x KL) and set its latent scaling factor."""
    from diffusers import AutoencoderKL

    out_dir = Path(out_dir)
    final = vae_final_path(out_dir)
    if (final / "config.json").is_file():
        return final
    work = out_dir / "work"
    images, _ = load_dataset(work, settings.n_scenes, settings.seed)
    n = len(images)
    vae = build_vae(cfg.vae, seed=settings.seed).to(device).train()
    with torch.no_grad():
        # Start the posterior's log-variance at -8 (std 0.02) instead of 0: sampled latents are then not drowned
        # in unit noise while the encoder learns, and the tiny KL weight keeps them small (as SD's VAE's are).
        vae.quant_conv.bias[cfg.vae.latent_channels :] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    ckpt = Checkpointer(work / "vae" / "checkpoints", settings.keep_checkpoints)
    start = ckpt.resume(opt, device, lambda weights: vae.load_state_dict(unprefixed("vae", weights)))
    crop = settings.vae_crop or cfg.image_size
    print(
        f"VAE: {count_parameters(vae) / 1e6:.2f}M parameters, {n} scenes, resuming at step {start}",
        flush=True,
    )

    def step_fn(step: int) -> float:
        g = torch.Generator().manual_seed(step_seed(settings.seed, "vae", step))
        idx = torch.randint(0, n, (settings.vae_batch,), generator=g).sort().values.numpy()
        x = to_tensor(images[idx])
        if crop < cfg.image_size:
            cells = (cfg.image_size - crop) // 4 + 1
            oy, ox = (torch.randint(0, cells, (2,), generator=g) * 4).tolist()
            x = x[:, :, oy : oy + crop, ox : ox + crop]
        x = x.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings.vae_steps, settings.vae_lr, 100)
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=g).to(device)
        z = posterior.mean + posterior.std * noise
        rec = vae.decode(z).sample
        # MSE (what PSNR measures): its gradient is led by the large errors on shapes, where L1's is led by the
        # many background pixels.
        loss = F.mse_loss(rec, x) + settings.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    def save_fn(step: int) -> None:
        ckpt.save(step, prefixed("vae", vae.state_dict()), {"optimizer": opt.state_dict()})

    run_steps("vae", settings.vae_steps, start, step_fn, save_fn, settings.ckpt_every, settings.threads)

    # SD's latent scaling: 1 / std of the latents, so that the UNet sees unit-variance data.
    vae.eval()
    with torch.no_grad():
        sample = to_tensor(images[: min(n, 2048)])
        lat = torch.cat(
            [
                vae.encode(sample[i : i + 256].to(device)).latent_dist.mean.cpu()
                for i in range(0, len(sample), 256)
            ]
        )
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    save_pretrained_atomic(vae.to("cpu"), final)
    write_json_atomic(work / "vae" / "settings.json", settings_record(cfg, settings), indent=1)
    assert AutoencoderKL  # the saved folder loads with AutoencoderKL.from_pretrained
    return final


def train_vae_decoder(
    out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device
) -> Path:
    """Fine-tune the VAE's decoder alone (MSE) for ``vae_decoder_steps``; the encoder is frozen, so latents (and
    a UNet trained on them) stay valid. Writes work/vae/decoder-final and, when base/ exists, base/vae."""
    from diffusers import AutoencoderKL

    out_dir = Path(out_dir)
    final = vae_decoder_path(out_dir)
    if settings.vae_decoder_steps <= 0:
        return current_vae_path(out_dir)
    if not (final / "config.json").is_file():
        work = out_dir / "work"
        images, _ = load_dataset(work, settings.n_scenes, settings.seed)
        n = len(images)
        vae = AutoencoderKL.from_pretrained(vae_final_path(out_dir)).to(device)
        vae.requires_grad_(False).eval()
        trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
        for p in trainable:
            p.requires_grad_(True)
        vae.decoder.train()
        opt = torch.optim.AdamW(trainable, lr=settings.vae_lr * 0.5, weight_decay=0.0)
        ckpt = Checkpointer(work / "vae" / "decoder-checkpoints", settings.keep_checkpoints)
        start = ckpt.resume(opt, device, lambda weights: vae.load_state_dict(unprefixed("vae", weights)))
        total = settings.vae_decoder_steps
        print(f"VAE decoder fine-tuning: {total} steps, resuming at step {start}", flush=True)

        def step_fn(step: int) -> float:
            g = torch.Generator().manual_seed(step_seed(settings.seed, "vae_decoder", step))
            idx = torch.randint(0, n, (settings.vae_batch,), generator=g).sort().values.numpy()
            x = to_tensor(images[idx]).to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, settings.vae_lr * 0.5, 50)
            with torch.no_grad():
                posterior = vae.encode(x).latent_dist
                noise = torch.randn(posterior.mean.shape, generator=g).to(device)
                z = posterior.mean + posterior.std * noise
            loss = F.mse_loss(vae.decode(z).sample, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            return float(loss.detach())

        def save_fn(step: int) -> None:
            ckpt.save(step, prefixed("vae", vae.state_dict()), {"optimizer": opt.state_dict()})

        run_steps("vae-decoder", total, start, step_fn, save_fn, settings.ckpt_every, settings.threads)
        save_pretrained_atomic(vae.to("cpu").eval(), final)
    base = base_final_path(out_dir)
    if (base / "model_index.json").is_file():
        vae = AutoencoderKL.from_pretrained(final)
        save_pretrained_atomic(vae, base / "vae")
    return final
