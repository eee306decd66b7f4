"""`ip2p edit` over several `accelerate launch` processes: together they write what one process writes."""

import os
import subprocess
import sys

import numpy as np
import pytest
from launch import TWO_CPU_PROCESSES
from PIL import Image


@pytest.mark.slow
def test_two_processes_edit_a_folder_as_one_does(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        pixels = np.random.default_rng(i).integers(0, 255, (24 + 4 * i, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / f"{i}.png")
    (src / "5.png").write_bytes(b"not a png")  # item 5 goes to the second process: its failure must count
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    common = ["edit", str(src), "make it blue", "--model", "tiny", "--steps", "2", "--resolution", "32"]
    common += ["--device", "cpu", "--seed", "7"]
    one = subprocess.run(
        [sys.executable, "-m", "ip2p.cli", *common, "-o", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
    )
    two = subprocess.run(
        [*TWO_CPU_PROCESSES, "-m", "ip2p.cli", *common, "-o", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 1, one.stderr[-2000:]  # the broken file
    assert two.returncode != 0, two.stderr[-2000:]
    assert "Traceback" not in one.stderr  # (the launcher shows its own on a process's status 1)
    assert one.stdout == f"edited 5, skipped 0, failed 1; outputs in {tmp_path / 'one'}\n"
    assert two.stdout == f"edited 5, skipped 0, failed 1; outputs in {tmp_path / 'two'}\n"  # printed once
    assert two.stderr.count(f"ip2p: error: {src / '5.png'}: ") == 1
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == [f"{i}.png" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        a, b = Image.open(tmp_path / "one" / name), Image.open(tmp_path / "two" / name)
        assert a.text == b.text and a.text["ip2p:seed"] == "7"
        assert np.array_equal(np.asarray(a), np.asarray(b)), name
    # a rerun in two processes skips every done item and still counts the failure
    again = subprocess.run(
        [*TWO_CPU_PROCESSES, "-m", "ip2p.cli", *common, "-o", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.stdout == f"edited 0, skipped 5, failed 1; outputs in {tmp_path / 'two'}\n", again.stderr
