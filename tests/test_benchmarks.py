"""benchmarks/gpu_edit.py end to end on the CPU (``--tiny``): every option's row, the offload rows marked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_edit  # noqa: E402 (benchmarks/gpu_edit.py)


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_gpu_edit_tiny_on_cpu(tmp_path, capsys):
    out = tmp_path / "gpu_edit.json"
    assert gpu_edit.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cpu"
    rows = report["results"]
    assert {r["config"] for r in rows} == {"tiny", "tiny-sdxl"}
    for config in ("tiny", "tiny-sdxl"):
        assert [r["options"] for r in rows if r["config"] == config] == list(gpu_edit.OPTIONS)
    for r in rows:
        if r["options"] in gpu_edit.NEEDS_GPU:
            assert r["status"] == "needs a GPU" and "runs" not in r
        else:
            assert r["status"] == "ok"
            assert all(r["runs"][impl]["seconds"] > 0 for impl in ("ip2p", "diffusers"))
            assert r["runs"]["ip2p"]["peak_vram_gib"] is None  # no GPU memory on the CPU
            assert r["ratio_s"] > 0

    table = capsys.readouterr().out.splitlines()
    body = [line for line in table if line.startswith("| tiny")]
    assert len(body) == len(rows) == 12
    for line, r in zip(body, rows, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [r["config"], "32", "2", r["options"]]
        if r["options"] in gpu_edit.NEEDS_GPU:
            assert cells[4:] == ["needs a GPU"] * 6
        else:
            assert float(cells[4]) > 0 and float(cells[5]) > 0 and cells[7:] == ["-"] * 3


def test_gpu_edit_refuses_unknown_option(capsys):
    try:
        gpu_edit.main(["--tiny", "--options", "none,turbo"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("an unknown option was accepted")
    assert "unknown option 'turbo'" in capsys.readouterr().err


@pytest.mark.slow  # six fresh processes, each importing torch and diffusers
def test_bench_train_memory_tiny_on_cpu(tmp_path, capsys):
    import bench_train_memory  # benchmarks/bench_train_memory.py

    out = tmp_path / "train_memory.json"
    setups = "full,full+gc,lora64"
    code = bench_train_memory.main(
        ["--tiny", "--configs", setups, "--batches", "1,2", "--resolution", "32", "--steps", "1"]
        + ["--out", str(out)]
    )
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    assert [(r["setup"], r["batch"]) for r in rows] == [(s, b) for b in (1, 2) for s in setups.split(",")]
    for r in rows:
        assert r["status"] == "ok" and r["peak_gib"] > 0 and r["samples_per_s"] > 0
        assert r["memory_vs_full"] > 0 and r["speed_vs_full"] > 0
    full, lora = rows[0], rows[2]
    assert full["memory_vs_full"] == 1.0 and lora["trainable_millions"] < full["trainable_millions"]
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| full", "| lora"))]
    assert len(table) == len(rows)
