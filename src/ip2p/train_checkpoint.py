"""``ip2p train``'s checkpoints: what a run needs to continue exactly, and only what trains.

A checkpoint folder (``RUN/checkpoints/checkpoint-STEP``, written under a temporary name and renamed) holds the UNet
weights that train (every weight in a full fine-tune; the LoRA adapters, and the input convolution where it
trains, in a LoRA run: no frozen weight), their EMA, the optimizer's state, the LR schedule, the step and the
config. There is no RNG state to save: every example's randomness is keyed by the seed and its position
(:mod:`ip2p.train`), so a resumed run equals an uninterrupted one.

Example::

    save_checkpoint(trainer)  # after a step
    resume(trainer)           # at start-up, before accelerate wraps the UNet and optimizer
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ip2p.fileio import atomic_dir
from ip2p.harness import keep_newest, numbered
from ip2p.train_lora import load_trainable_state, trainable_named_parameters, trainable_state

Trainer = Any  # ip2p.train.Trainer (which calls these: no import of it here, that would be a cycle)


def checkpoints(out: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    return [path for _, path in numbered(out / "checkpoints", "checkpoint-")]


def save_checkpoint(trainer: Trainer) -> Path | None:
    """Trained weights, their EMA, optimizer, LR schedule and step of ``trainer``, written atomically; the newest
    ``checkpoints_total_limit`` are kept. Returns the folder (None on processes other than the main one)."""
    acc = trainer.accelerator
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    from safetensors.torch import save_file

    root = trainer.out / "checkpoints"
    final = root / f"checkpoint-{trainer.step}"
    with atomic_dir(final) as tmp:
        unet = acc.unwrap_model(trainer.unet)
        save_file(trainable_state(unet), tmp / "unet.safetensors")
        if trainer.ema is not None:
            names = [n for n, _ in trainable_named_parameters(unet)]
            save_file(
                {n: p.contiguous() for n, p in zip(names, trainer.ema.shadow_params, strict=True)},
                tmp / "ema.safetensors",
            )
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        state = {
            "step": trainer.step,
            "lr_scheduler": trainer.lr_scheduler.state_dict(),
            "ema_optimization_step": trainer.ema.optimization_step if trainer.ema else None,
            "config": asdict(trainer.config),
            "sample_weights_sha256": trainer._sample_weights_sha256(),
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
    keep_newest(root, "checkpoint-", trainer.config.checkpoints_total_limit)
    return final


def resume(trainer: Trainer) -> None:
    """Continue from the newest checkpoint of ``trainer``'s output folder, if any: weights, optimizer, EMA, LR
    schedule and step. A checkpoint of another run (other trained weights, other sample weights) is refused."""
    found = checkpoints(trainer.out)
    if not found:
        return
    from safetensors.torch import load_file

    ckpt = found[-1]
    unet = trainer.components.unet
    load_trainable_state(unet, load_file(ckpt / "unet.safetensors"), str(ckpt))
    state = json.loads((ckpt / "state.json").read_text())
    recorded, current = state.get("sample_weights_sha256"), trainer._sample_weights_sha256()
    if recorded != current:
        raise ValueError(
            f"{ckpt}: its run drew examples by other sample weights ({recorded or 'none'}, now "
            f"{current or 'none'}); resuming would not continue the same run (use another --output-dir)"
        )
    # Our own checkpoint, holding tensors and numbers only: weights_only refuses anything else.
    trainer.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if trainer.ema is not None and (ckpt / "ema.safetensors").is_file():
        shadows = load_file(ckpt / "ema.safetensors")
        trainer.ema.shadow_params = [shadows[n].clone() for n, _ in trainable_named_parameters(unet)]
        trainer.ema.optimization_step = state["ema_optimization_step"]
    trainer.step = state["step"]
    if trainer.accelerator.is_main_process:
        print(f"resumed from {ckpt} at step {trainer.step}")
