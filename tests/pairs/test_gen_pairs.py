"""The stage-2 job: output formats and readers, kill-and-resume, job arrays, two processes, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from launch import TWO_CPU_PROCESSES

from ip2p.cli import main
from ip2p.pairs.generate import apply_preset, generate_pairs

# A tiny model on 32 px; 4 triplets in 4 shards; thresholds that keep some candidates and drop others.
SETTINGS = dict(
    model="tiny",
    resolution=32,
    num_candidates=3,
    batch_size=2,
    steps=2,
    shard_size=1,
    top_k=2,
    clip_threshold=-1.0,
    clip_dir_threshold=0.0,
    clip_img_threshold=0.5,
    device="cpu",
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _config(triplets, clip, out, **kw):
    return apply_preset(
        "paper", {**SETTINGS, "triplets": str(triplets), "clip": str(clip), "output": str(out), **kw}
    )


def _flags(triplets, clip, out):
    flags = [str(triplets), "-o", str(out), "--clip", str(clip), "--no-progress"]
    for key, value in SETTINGS.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def _content(out: Path) -> dict:
    """What must not depend on interruptions or on how the work was split."""
    content = {}
    for path in sorted((out / "data").glob("*.parquet")):
        content[path.name] = pq.read_table(path).to_pylist()
    for path in sorted((out / "scores").glob("*.jsonl")):
        content[path.name] = path.read_text()
    for path in sorted((out / "stats").glob("*.json")):
        stats = json.loads(path.read_text())
        stats.pop("seconds")
        content[path.name] = stats
    return content


@pytest.fixture(scope="module")
def straight(triplets_file, tiny_clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "pairs"
    manifest = generate_pairs(_config(triplets_file, tiny_clip_dir, out), progress=False)
    return out, manifest


def test_parquet_output_reads_back_in_the_official_schema(straight):
    import datasets

    from ip2p.datasets import open_edit_dataset

    out, manifest = straight
    totals = manifest["totals"]
    assert manifest["shards"] == {"total": 4, "done": 4, "complete": True}
    assert totals["triplets"] == 4 and totals["candidates"] == 12 and totals["unet_calls"] == 4 * 2 * 2
    assert totals["unet_evaluations"] == 12 * 4 * 2  # candidates x 4 rows x steps
    assert 0 < totals["passed"] < 12, "the thresholds should keep some candidates and drop others"
    assert totals["pairs"] <= 2 * totals["triplets_with_pairs"]
    assert totals["unet_evaluations_per_pair"] == totals["unet_evaluations"] / totals["pairs"]
    files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
    table = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(table) == totals["pairs"]
    assert table.column_names[:5] == [
        "original_prompt",
        "original_image",
        "edit_prompt",
        "edited_prompt",
        "edited_image",
    ]
    row = table[0]
    assert row["original_image"].size == (32, 32) and row["rank"] == 0
    assert {
        "seed",
        "p2p_threshold",
        "cfg_scale",
        "clip_sim_0",
        "clip_sim_1",
        "clip_sim_dir",
        "clip_sim_image",
    } <= set(row)
    assert 0.1 <= row["p2p_threshold"] <= 0.9 and 7.5 <= row["cfg_scale"] <= 15
    ours = open_edit_dataset(out / "data")
    assert len(ours) == len(table) and ours[0].edit_prompt == row["edit_prompt"]
    # Every candidate was logged; the kept ones are the best passing ones by directional similarity.
    scores = [
        json.loads(line)
        for p in sorted((out / "scores").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert len(scores) == 12 and sum(s["kept"] for s in scores) == totals["pairs"]
    for s in scores:
        assert s["passed"] == (s["clip_sim_dir"] >= 0 and s["clip_sim_image"] >= 0.5)
    assert (out / "report" / "scores.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["config"]["clip_img_threshold"] == 0.5


def test_one_batch_across_triplets_keeps_the_same_pairs(straight, triplets_file, tiny_clip_dir, tmp_path):
    # All 12 candidates of the 4 triplets in one UNet batch of one shard: 2 calls instead of 16.
    out = tmp_path / "packed"
    manifest = generate_pairs(
        _config(triplets_file, tiny_clip_dir, out, shard_size=4, batch_size=12), progress=False
    )
    assert manifest["totals"]["unet_calls"] == 2
    assert manifest["totals"]["unet_evaluations"] == straight[1]["totals"]["unet_evaluations"]
    one_by_one = [
        json.loads(line)
        for p in sorted((straight[0] / "scores").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    packed = [json.loads(line) for line in (out / "scores" / "shard-00000.jsonl").read_text().splitlines()]
    assert [(r["item"], r["candidate"], r["seed"], r["passed"], r["kept"]) for r in packed] == [
        (r["item"], r["candidate"], r["seed"], r["passed"], r["kept"]) for r in one_by_one
    ]
    for a, b in zip(packed, one_by_one, strict=True):
        assert a["clip_sim_dir"] == pytest.approx(b["clip_sim_dir"], abs=1e-4)


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_killed_run_resumes_to_the_uninterrupted_result(straight, triplets_file, tiny_clip_dir, tmp_path):
    out = tmp_path / "resumed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ip2p.cli", "gen-pairs", *_flags(triplets_file, tiny_clip_dir, out)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while (
        not (out / "stats" / "shard-00000.json").exists() and time.time() < deadline and proc.poll() is None
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list((out / "stats").glob("shard-*.json"))
    assert 1 <= len(done) < 4, "the run was not killed between shards"
    assert main(["gen-pairs", *_flags(triplets_file, tiny_clip_dir, out)]) == 0  # the same command again
    assert _content(out) == _content(straight[0])


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_job_array_shards_union_to_the_single_run(straight, triplets_file, tiny_clip_dir, tmp_path):
    out = tmp_path / "array"
    first = generate_pairs(_config(triplets_file, tiny_clip_dir, out, shard=0, num_shards=2), progress=False)
    assert first["shards"]["done"] == 2 and not first["shards"]["complete"]
    second = generate_pairs(_config(triplets_file, tiny_clip_dir, out, shard=1, num_shards=2), progress=False)
    assert second["shards"]["complete"]
    assert _content(out) == _content(straight[0])


@pytest.mark.slow
def test_two_processes_split_the_work_without_overlap(straight, triplets_file, tiny_clip_dir, tmp_path):
    out = tmp_path / "two"
    run = subprocess.run(
        [
            *TWO_CPU_PROCESSES,
            "-m",
            "ip2p.cli",
            "gen-pairs",
            *_flags(triplets_file, tiny_clip_dir, out),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert _content(out) == _content(straight[0])
    assert json.loads((out / "manifest.json").read_text())["shards"]["complete"]


def test_original_format_round_trips_and_failures_are_recorded(triplets_file, tiny_clip_dir, tmp_path):
    from ip2p.datasets import open_edit_dataset

    out = tmp_path / "original"
    # Word swap needs equal word counts: triplet 1 ("two green squares" -> "... and a triangle") cannot be done.
    manifest = generate_pairs(
        _config(
            triplets_file,
            tiny_clip_dir,
            out,
            format="original",
            mode="replace",
            clip_dir_threshold=-1.0,
            clip_img_threshold=-1.0,
            limit=2,
        ),
        progress=False,
    )
    assert manifest["totals"]["failed"] == 1 and manifest["totals"]["pairs"] == 2
    stats = json.loads((out / "stats" / "shard-00001.json").read_text())
    assert "equal word counts" in stats["failures"][0]["error"]
    seeds = json.loads((out / "seeds.json").read_text())
    assert [name for name, _ in seeds] == ["0000000"] and len(seeds[0][1]) == 2
    folder = out / "0000000"
    assert json.loads((folder / "prompt.json").read_text())["input"] == "a red circle on the left"
    meta = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert list(meta[0]) == [
        "seed",
        "p2p_threshold",
        "cfg_scale",
        "clip_sim_0",
        "clip_sim_1",
        "clip_sim_dir",
        "clip_sim_image",
    ]
    assert meta[0]["clip_sim_dir"] >= meta[1]["clip_sim_dir"]
    data = open_edit_dataset(out)
    assert len(data) == 2 and data[0].edited_prompt == "a blue circle on the left"
    assert data[0].original_image.size == (32, 32)


def test_bad_inputs_are_one_line_errors(straight, triplets_file, tiny_clip_dir, tmp_path, capsys):
    out = tmp_path / "o"
    cases = [
        ([str(tmp_path / "none.jsonl"), "-o", str(out)], "no such file"),
        ([str(triplets_file), "-o", str(out), "--clip-img-threshold", "2"], "clip_img_threshold"),
        ([str(triplets_file), "-o", str(out), "--mode", "swap"], "unknown mode"),
        ([str(triplets_file), "-o", str(out), "--shard", "2", "--num-shards", "2"], "shard 2 of 2"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "edit": "b", "output": "c"}\nnot json\n')
    cases.append(
        ([str(bad), "-o", str(out), "--model", "tiny", "--device", "cpu"], "bad.jsonl:2: not valid JSON")
    )
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"input": "a", "edit": "b"}\n')
    cases.append(([str(missing), "-o", str(out)], "missing text field(s) ['output']"))
    # Resuming with other settings would mix two runs in one output.
    cases.append(
        (_flags(triplets_file, tiny_clip_dir, straight[0]) + ["--seed", "1"], "other settings (seed")
    )
    for argv, message in cases:
        assert main(["gen-pairs", *argv]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_triplets_accept_caption_for_input_and_presets_resolve(triplets_file, capsys):
    from ip2p.pairs.generate import read_triplets

    rows = read_triplets(triplets_file)
    assert rows[1]["input"] == rows[1]["caption"] == "two green squares" and len(rows) == 4
    toy, paper = apply_preset("toy"), apply_preset("paper")
    assert (toy.resolution, toy.num_candidates, toy.steps, toy.clip) == (64, 4, 20, "toy")
    fast = apply_preset("toy-fast", {"steps": 12})
    assert (fast.num_candidates, fast.steps, fast.scheduler, fast.clip) == (2, 12, "dpmpp_2m", "toy")
    # the toy base's guidance range (docs/results.md: the pair guidance range), the paper's everywhere else
    assert (toy.min_cfg, toy.max_cfg) == (fast.min_cfg, fast.max_cfg) == (2.0, 4.0)
    assert (paper.min_cfg, paper.max_cfg) == (7.5, 15.0)
    assert apply_preset("toy", {"min_cfg": 7.5, "max_cfg": 15.0}).max_cfg == 15.0
    assert (paper.resolution, paper.num_candidates, paper.steps, paper.top_k) == (512, 100, 100, 1)
    assert (paper.clip_threshold, paper.clip_dir_threshold, paper.clip_img_threshold) == (0.2, 0.2, 0.75)
    with pytest.raises(SystemExit) as exit_:
        main(["gen-pairs", "--help"])
    assert exit_.value.code == 0 and "--clip-img-threshold" in capsys.readouterr().out


def _write_report(path):
    from ip2p.pairs.report import SCORE_NAMES, plot_histograms

    rows = [{**{name: 0.1 * i for name in SCORE_NAMES}, "kept": i % 2 == 0} for i in range(10)]
    return plot_histograms(rows, {SCORE_NAMES[0]: 0.2}, path)


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_workers_writing_the_report_at_once_do_not_collide(tmp_path):
    # Job-array workers each write the report of the shards done so far; a shared temporary name made one fail.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    path = tmp_path / "report" / "scores.png"
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_write_report, [path] * 8))
    assert results == [path] * 8 and path.stat().st_size > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.png"]
