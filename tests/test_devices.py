"""ip2p.devices: the device of a process, and dtype choices with one-line refusals."""

import pytest
import torch

from ip2p.devices import pick_device, pick_dtype, process_device


def test_one_process_keeps_the_device_asked_for():
    assert process_device("cpu") == "cpu"
    assert process_device("auto", cpu=True) == "auto"  # one process: nothing to spread over GPUs
    assert process_device(None, cpu=True) == "auto"


def test_dtypes_on_the_cpu():
    cpu = pick_device("cpu")
    assert pick_dtype(cpu) == torch.float32 and pick_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        pick_dtype(cpu, "fp16")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        pick_dtype(cpu, "fp8")
