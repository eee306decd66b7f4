"""benchmarks/gpu_edit.py end to end on the CPU (``--tiny``): every option's row, the offload rows marked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_edit  # noqa: E402 (benchmarks/gpu_edit.py)


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
