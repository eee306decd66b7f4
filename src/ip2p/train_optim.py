"""The optimizers of ``ip2p train`` (``--optimizer``): torch's AdamW, or bitsandbytes' 8-bit AdamW.

AdamW keeps two moments per trained weight, 8 bytes in fp32: for a full fine-tune of SD-1.5's UNet (860M weights)
6.9 GB beside the weights' 3.4 GB and the gradients' 3.4 GB. bitsandbytes' ``AdamW8bit`` (Dettmers et al., 2022)
stores both moments block-wise quantised to 8 bits, 2 bytes per weight (1.7 GB), with the same update rule and
hyper-parameters; tensors under 4,096 elements keep 32-bit moments. bitsandbytes is optional (``pip install
'ip2p[bnb]'``); where it is missing, or installed but unable to run on the training device, choosing it is a
one-line :class:`OptimizerError` naming the cause and the fix, raised before any training step.

Example::

    optimizer = build_optimizer(trainable_parameters(unet), config, torch.device("cuda"))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ip2p.train_config import OPTIMIZERS, TrainConfig


class OptimizerError(ValueError):
    """An optimizer that cannot run here; one line."""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def bitsandbytes_adamw8bit(device: torch.device):
    """bitsandbytes' ``AdamW8bit`` class, once a probe step of it has run on ``device``; else OptimizerError."""
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # not installed, or a build that fails to load its native library
        raise OptimizerError(
            f"--optimizer adamw8bit needs bitsandbytes, which cannot be imported ({_first_line(exc)}): "
            "pip install 'ip2p[bnb]' (or bitsandbytes), or use --optimizer adamw"
        ) from exc
    # A probe: one step on a tensor large enough for 8-bit moments (bitsandbytes keeps 32-bit ones under 4,096
    # elements), so that a build without kernels for this device fails here, in one line, not mid-run.
    probe = torch.nn.Parameter(torch.ones(4096, device=device))
    probe.grad = torch.full_like(probe, 0.5)
    try:
        bnb.optim.AdamW8bit([probe], lr=1e-3).step()
    except Exception as exc:
        version = getattr(bnb, "__version__", "?")
        raise OptimizerError(
            f"--optimizer adamw8bit: bitsandbytes {version} cannot run its 8-bit AdamW on {device.type} "
            f"({_first_line(exc)}); use --optimizer adamw here, or a device bitsandbytes supports (CUDA)"
        ) from exc
    return bnb.optim.AdamW8bit


def build_optimizer(
    params: Sequence[torch.nn.Parameter], config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` over ``params`` (the weights that train), with the run's learning rate,
    betas, weight decay and epsilon."""
    params = list(params)
    if not params:
        raise OptimizerError("no UNet weight trains: check --lora-targets")
    settings = dict(
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    if config.optimizer == "adamw":
        # torch's fused AdamW (one kernel for every parameter) where the device has it; on CPU its default is a
        # Python loop over the parameters
        fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        return torch.optim.AdamW(params, **settings, fused=fused or None)
    if config.optimizer == "adamw8bit":
        return bitsandbytes_adamw8bit(device)(params, **settings)
    raise OptimizerError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
