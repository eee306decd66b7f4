"""Device and dtype selection: CUDA in half precision where present, then MPS, then CPU in fp32."""

from __future__ import annotations

import torch

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for (validated), else CUDA, MPS or CPU, in that order."""
    if device is not None and str(device) != "auto":
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for but CUDA is not available; use --device cpu")
        if device.type == "mps" and not (
            hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
        ):
            raise ValueError(f"device {device} was asked for but MPS is not available; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(
    device: torch.device, dtype: str | torch.dtype | None = None, prefer_bf16: bool = False
) -> torch.dtype:
    """fp16 on CUDA and MPS, fp32 on CPU, unless asked otherwise ("fp32", "fp16", "bf16"). ``prefer_bf16``: bf16
    instead of fp16 on a CUDA GPU that supports it (its wider range never overflows where fp16 can)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None and dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of fp32, fp16, bf16")
        chosen = DTYPES[dtype]
        if device.type == "cpu" and chosen == torch.float16:
            raise ValueError("fp16 is not supported on the CPU; use --dtype bf16 or fp32")
        return chosen
    if prefer_bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def process_device(device: str | None = "auto", cpu: bool = False) -> str:
    """The device of this process: under ``accelerate launch`` with several processes, each process's own GPU
    (``auto`` or ``cuda`` would put them all on the first); otherwise ``device`` as given (``auto`` included)."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu or device == "cpu")
    if state.num_processes > 1 and device in (None, "auto", "cuda"):
        return str(state.device)
    return device or "auto"
