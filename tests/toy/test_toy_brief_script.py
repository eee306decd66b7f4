"""scripts/toy_brief.sh, the toy world's comparison with brief captions, run end to end at a tiny scale: the bundled
base's UNet fine-tuned for two steps on complete and brief captions, its quality on both, and the bundled editor
against SDEdit with it, and the reference points, on two held-out edits with brief captions (the complete-caption
evaluation is the same loop with the other test set; left out to keep the suite short)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "toy_brief.sh"


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_brief_script_fine_tunes_measures_and_compares(tmp_path):
    bin_dir = Path(sys.executable).parent
    out = tmp_path / "brief"
    env = dict(
        os.environ,
        IP2P=str(bin_dir / "ip2p"),
        PY=sys.executable,
        OUT=str(out),
        FT_STEPS="2",
        N_SCENES="48",
        EVAL_ITEMS="2",
        EVAL_STEPS="2",
        IMAGE_GUIDANCE="1.5",
        STRENGTHS="0.5",
        QUALITY_FLAGS="--limit 2 --steps 2",
        EDIT_MODEL="toy",
        CAPTION_SETS="brief",
    )
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads((out / "work" / "unet" / "settings.json").read_text())
    assert record["train"]["unet_init"] == "toy" and record["train"]["brief_captions"] == 0.5
    quality = json.loads((out / "quality" / "quality.json").read_text())
    assert {"t2i_one_shape", "t2i_two_shape", "t2i_brief_one_shape", "t2i_brief_two_shape"} <= quality.keys()
    rows = [json.loads(x) for x in (out / "eval-brief" / "summary.jsonl").read_text().splitlines()]
    assert {r["method"] for r in rows} == {"ip2p", "sdedit"} and all(r["n"] == 2 for r in rows)
    assert (out / "eval-brief.png").is_file() and not (out / "eval-complete").exists()
    table = (out / "eval-brief.md").read_text()
    assert "| sdedit |" in table and "| target-vae |" in table and "reference target-vae:" in table
    records = (out / "eval-brief" / "records.jsonl").read_text()
    assert "toy-brief-0000" in records
    again = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming" not in again.stdout  # the fine-tune is done: skipped


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_brief_script_refuses_an_unknown_precision(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "brief"), PRECISION="fp16")
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "PRECISION must be fp32 or bf16, not 'fp16'" in run.stderr
    assert not (tmp_path / "brief").exists()
