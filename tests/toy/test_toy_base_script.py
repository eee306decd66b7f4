"""scripts/toy_base_cpu.sh, the CPU recipe of the toy base, run end to end on the tiny test preset: VAE and CLIP side by
side, CLIP stopped by SIGTERM when the VAE is done and resumed on both cores, then the UNet, CLIP's image tower and
the quality bars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "toy_base_cpu.sh"


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_cpu_recipe_script_trains_every_stage_and_measures_them(tmp_path):
    ip2p = Path(sys.executable).with_name("ip2p")
    env = dict(
        os.environ,
        IP2P=str(ip2p),
        OUT=str(tmp_path / "base"),
        PRESET="test",
        N_SCENES="48",
        VAE_STEPS="2",
        CLIP_STEPS="3",
        UNET_STEPS="2",
        CLIP_VISION_STEPS="1",
        QUALITY_FLAGS="--limit 2 --steps 2",
    )
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = tmp_path / "base"
    assert "VAE done: CLIP moves to both cores" in run.stdout
    assert (out / "base" / "model_index.json").is_file()
    assert json.loads((out / "work" / "clip" / "settings.json").read_text())["steps_done"] == 3
    vision = json.loads((out / "work" / "clip_vision" / "settings.json").read_text())
    # bf16 autocast where the CPU computes it natively, fp32 where it would be emulated (scripts/cpu_precision.sh)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    precision = "bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else "fp32"
    assert vision["train"]["attention"] == "classic" and vision["train"]["clip_precision"] == precision
    unet = json.loads((out / "work" / "unet" / "settings.json").read_text())
    assert unet["train"]["unet_precision"] == precision and unet["train"]["unet_batch"] == 128
    quality = json.loads((out / "quality" / "quality.json").read_text())
    assert {"vae_psnr_db", "clip_top1", "t2i_one_shape", "t2i_two_shape"} <= quality.keys()
    # run again: every stage is done, so it only measures again
    again = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" not in again.stdout
