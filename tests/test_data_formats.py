"""ip2p.data: every layout built here and read with no flags, conversion round trips, inspect and --validate,
streaming split over processes with exact resume, and a training step on an imagefolder with metadata.jsonl."""

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import datasets
import pytest
from PIL import Image

from ip2p.cli import main
from ip2p.data import (
    Columns,
    DatasetError,
    EditStream,
    convert_dataset,
    detect_format,
    inspect_dataset,
    open_edit_dataset,
    open_edit_stream,
    write_parquet_shard,
)
from ip2p.data.inspect import find_problems
from ip2p.data.sources import open_hf

N = 5


def _image(i, edited=False, size=16):
    return Image.new("RGB", (size, size), (0, 40 * i + 1, 200) if edited else (40 * i + 1, 0, 100))


def _png(image, format="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def _check(data, n=N, captions=True):
    assert len(data) == n
    for i in range(n):
        ex = data[i]
        assert ex.edit_prompt == f"edit {i}"
        assert ex.original_image.getpixel((3, 3)) == _image(i).getpixel((3, 3))
        assert ex.edited_image.getpixel((3, 3)) == _image(i, True).getpixel((3, 3))
        if captions:
            assert (ex.original_prompt, ex.edited_prompt) == (f"before {i}", f"after {i}")


def _official_rows(n=N):
    return [
        {
            "original_prompt": f"before {i}",
            "original_image": _image(i),
            "edit_prompt": f"edit {i}",
            "edited_prompt": f"after {i}",
            "edited_image": _image(i, True),
        }
        for i in range(n)
    ]


def _imagefolder(root, n=N):
    (root / "images").mkdir(parents=True)
    with open(root / "metadata.jsonl", "w") as meta:
        for i in range(n):
            _image(i).save(root / "images" / f"{i}_in.png")
            _image(i, True).save(root / "images" / f"{i}_out.png")
            line = {
                "original_image_file_name": f"images/{i}_in.png",
                "edited_image_file_name": f"images/{i}_out.png",
                "edit_prompt": f"edit {i}",
                "original_prompt": f"before {i}",
                "edited_prompt": f"after {i}",
            }
            meta.write(json.dumps(line) + "\n")
    return root


def _webdataset(root, n=N, per_shard=2):
    root.mkdir(parents=True)
    for shard in range(0, n, per_shard):
        with tarfile.open(root / f"shard-{shard // per_shard:05d}.tar", "w") as tar:
            for i in range(shard, min(n, shard + per_shard)):
                texts = {
                    "edit_prompt": f"edit {i}",
                    "original_prompt": f"before {i}",
                    "edited_prompt": f"after {i}",
                }
                for name, data in (
                    (f"{i:04d}.original_image.png", _png(_image(i))),
                    (f"{i:04d}.edited_image.png", _png(_image(i, True))),
                    (f"{i:04d}.json", json.dumps(texts).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def _original(root, n=N):
    listing = []
    for i in range(n):
        folder = root / f"{i:07d}"
        folder.mkdir(parents=True)
        (folder / "prompt.json").write_text(
            json.dumps({"input": f"before {i}", "edit": f"edit {i}", "output": f"after {i}"})
        )
        _image(i).save(folder / "7_0.jpg", quality=100)
        _image(i, True).save(folder / "7_1.jpg", quality=100)
        listing.append([folder.name, ["7"]])
    (root / "seeds.json").write_text(json.dumps(listing))
    return root


def _features():
    return datasets.Features(
        {
            "original_prompt": datasets.Value("string"),
            "original_image": datasets.Image(),
            "edit_prompt": datasets.Value("string"),
            "edited_prompt": datasets.Value("string"),
            "edited_image": datasets.Image(),
        }
    )


# -- every layout, no flags -------------------------------------------------------------------------------------
def test_imagefolder_with_metadata_jsonl(tmp_path):
    root = _imagefolder(tmp_path / "folder")
    assert detect_format([str(root)]) == "imagefolder"
    _check(open_edit_dataset(root))


def test_diffusers_imagefolder_and_column_names(tmp_path):
    """diffusers' script: `file_name` (read as `image`) with input_image / edited_image names elsewhere."""
    root = tmp_path / "folder"
    root.mkdir()
    with open(root / "metadata.jsonl", "w") as meta:
        for i in range(N):
            _image(i).save(root / f"{i}.png")
            _image(i, True).save(root / f"{i}_edited.png")
            meta.write(
                json.dumps(
                    {
                        "file_name": f"{i}.png",
                        "edited_image_file_name": f"{i}_edited.png",
                        "edit_prompt": f"edit {i}",
                    }
                )
                + "\n"
            )
    _check(open_edit_dataset(root), captions=False)
    rows = [
        {
            "input_image": r["original_image"],
            "edit_prompt": r["edit_prompt"],
            "edited_image": r["edited_image"],
        }
        for r in _official_rows()
    ]
    write_parquet_shard(rows, tmp_path / "d.parquet", image_columns=("input_image", "edited_image"))
    _check(open_edit_dataset(tmp_path / "d.parquet"), captions=False)


def test_save_to_disk_folder_and_datasetdict(tmp_path):
    ds = datasets.Dataset.from_list(_official_rows(), features=_features())
    ds.save_to_disk(str(tmp_path / "one"))
    assert detect_format([str(tmp_path / "one")]) == "disk"
    _check(open_edit_dataset(tmp_path / "one"))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    _check(open_edit_dataset(str(tmp_path / "dict")))
    with pytest.raises(DatasetError, match="no split 'test'"):
        open_edit_dataset(str(tmp_path / "dict"), split="test")


def test_official_parquet_through_datasets_names_file_and_row(tmp_path):
    rows = _official_rows()
    for k in range(2):  # two files: rows 0-2 and 3-4
        part = rows[:3] if k == 0 else rows[3:]
        datasets.Dataset.from_list(part, features=_features()).to_parquet(
            str(tmp_path / f"train-{k:05d}.parquet")
        )
    data = open_edit_dataset(str(tmp_path / "train-*.parquet"))
    _check(data)
    assert data.where(4) == f"{tmp_path / 'train-00001.parquet'} row 1"


def test_webdataset_shards(tmp_path):
    root = _webdataset(tmp_path / "wds")
    assert detect_format([str(root)]) == "webdataset"
    data = open_edit_dataset(root)
    _check(data)
    assert open_edit_dataset(str(root / "*.tar"), format="webdataset")[4].edit_prompt == "edit 4"


def test_original_repository_folders(tmp_path):
    data = open_edit_dataset(_original(tmp_path / "orig"))
    assert len(data) == N and data[2].edit_prompt == "edit 2" and data[2].original_prompt == "before 2"


def test_named_columns_and_missing_ones(tmp_path):
    rows = [
        {"src": r["original_image"], "text": r["edit_prompt"], "dst": r["edited_image"]}
        for r in _official_rows()
    ]
    write_parquet_shard(rows, tmp_path / "y.parquet", image_columns=("src", "dst"))
    data = open_edit_dataset(tmp_path / "y.parquet", Columns("src", "text", "dst"))
    _check(data, captions=False)
    with pytest.raises(DatasetError, match=r"y.parquet: missing column\(s\) original_image or input_image"):
        open_edit_dataset(tmp_path / "y.parquet")
    with pytest.raises(DatasetError, match="missing column 'nope'"):
        open_edit_dataset(tmp_path / "y.parquet", Columns("src", "nope"))


# -- convert ----------------------------------------------------------------------------------------------------
def test_convert_round_trips_keep_pixels_and_texts(tmp_path):
    rows = [{**r, "seed": i} for i, r in enumerate(_official_rows())]
    write_parquet_shard(rows, tmp_path / "src" / "a.parquet")
    current = tmp_path / "src"
    for layout in ("imagefolder", "webdataset", "disk", "parquet"):
        out = tmp_path / layout
        assert convert_dataset(open_edit_dataset(current), out, layout, shard_size=2) == N
        assert detect_format([str(out)]) == layout
        data = open_edit_dataset(out)
        _check(data)
        assert [data[i].extra.get("seed") for i in range(N)] == list(range(N)), layout
        current = out
    assert len(list((tmp_path / "webdataset").glob("*.tar"))) == 3
    # the original layout: JPEG bytes are copied as they are
    convert_dataset(open_edit_dataset(_original(tmp_path / "orig")), tmp_path / "o2p", "parquet")
    convert_dataset(open_edit_dataset(tmp_path / "o2p"), tmp_path / "p2o", "original")
    for i in range(N):
        for k in "01":
            a = (tmp_path / "orig" / f"{i:07d}" / f"7_{k}.jpg").read_bytes()
            assert (tmp_path / "p2o" / f"{i:07d}" / f"7_{k}.jpg").read_bytes() == a
    with pytest.raises(DatasetError, match="not an empty folder"):
        convert_dataset(open_edit_dataset(tmp_path / "o2p"), tmp_path / "p2o", "parquet")


def test_cli_convert_and_inspect(tmp_path, capsys):
    root = _imagefolder(tmp_path / "folder")
    assert main(["data", "convert", str(root), "-o", str(tmp_path / "wds"), "--to", "webdataset"]) == 0
    assert f"wrote {N} examples" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert main(["data", "inspect", str(tmp_path / "wds"), "--grid", str(grid), "--examples", "3"]) == 0
    out = capsys.readouterr().out
    assert f"webdataset, {N} rows" in out and "edit_prompt <- edit_prompt" in out
    assert Image.open(grid).size[0] >= 2 * 128
    report = inspect_dataset(str(root))
    assert report["rows"] == N and {"original_image", "edited_image", "edit_prompt"} <= set(report["columns"])


# -- checked early ----------------------------------------------------------------------------------------------
def test_validate_names_file_and_row_of_each_problem(tmp_path, capsys):
    rows = _official_rows()
    rows[1]["original_image"] = b"not an image"
    rows[3]["edit_prompt"] = "  "
    shard = write_parquet_shard(rows, tmp_path / "bad.parquet")
    problems, read = find_problems(open_edit_dataset(shard))
    assert read == N and [p.kind for p in problems] == ["not-image", "empty"]
    assert str(problems[0]).startswith(f"{shard} row 1: ") and str(problems[1]).startswith(f"{shard} row 3: ")
    assert main(["data", "inspect", str(shard), "--validate"]) == 1
    out = capsys.readouterr().out
    assert f"{shard} row 1: " in out and "2 rows with problems" in out
    # in training: stopped before the model loads, one line naming the file and row
    code = main(
        [
            "train",
            "--data",
            str(shard),
            "--validate",
            "--base-model",
            "/nonexistent",
            "--output-dir",
            str(tmp_path / "r"),
        ]
    )
    assert code == 1 and f"{shard} row 1: " in capsys.readouterr().err
    # a missing column: one line, exit 1
    assert main(["data", "inspect", str(shard), "--edit-prompt-column", "nope"]) == 1
    assert "missing column 'nope'" in capsys.readouterr().err


# -- streaming --------------------------------------------------------------------------------------------------
def _shards(tmp_path, n, per_file):
    rows = _official_rows(n)
    for k in range(0, n, per_file):
        write_parquet_shard(rows[k : k + per_file], tmp_path / f"s-{k:03d}.parquet")
    return str(tmp_path)


@pytest.mark.parametrize(
    "n, per_file", [(7, 7), (8, 2)]
)  # one shard (every 2nd row each) or whole shards each
def test_stream_split_over_processes_sees_every_example_once_an_epoch(tmp_path, n, per_file):
    source = _shards(tmp_path, n, per_file)
    seen = []
    for rank in range(2):
        stream = open_edit_stream(source, format="parquet", seed=3, buffer=3, rank=rank, world=2)
        first = []
        while True:
            ex = next(stream)
            if stream.epoch > 0:
                break
            first.append(ex.edit_prompt)
        seen += first
    assert sorted(seen) == sorted(f"edit {i}" for i in range(n))


def test_stream_shuffles_within_blocks_and_resumes_exactly(tmp_path):
    source = _shards(tmp_path, 9, 3)
    straight = open_edit_stream(source, seed=1, buffer=4)
    order = [ex.edit_prompt for ex in straight.take(25)]  # three epochs less two
    assert sorted(order[:9]) == [f"edit {i}" for i in range(9)] and order[:9] != sorted(order[:9])
    assert order[:9] != order[9:18]  # each epoch its own order
    for cut in (0, 3, 4, 9, 13):
        first = open_edit_stream(source, seed=1, buffer=4)
        head = [ex.edit_prompt for ex in first.take(cut)]
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        resumed = open_edit_stream(source, seed=1, buffer=4)
        resumed.load_state_dict(state)
        assert head + [ex.edit_prompt for ex in resumed.take(25 - cut)] == order, cut
    with pytest.raises(DatasetError, match="buffer 4, now 5"):
        open_edit_stream(source, seed=1, buffer=5).load_state_dict(state)


def test_stream_skips_and_counts_bad_rows(tmp_path, capsys):
    rows = _official_rows()
    rows[2]["edited_image"] = b"broken"
    write_parquet_shard(rows, tmp_path / "x.parquet")
    stream = open_edit_stream(str(tmp_path / "x.parquet"), buffer=1)
    assert [ex.edit_prompt for ex in stream.take(4)] == ["edit 0", "edit 1", "edit 3", "edit 4"]
    assert stream.skipped == 1 and "x.parquet" in capsys.readouterr().err


def test_streams_of_every_layout(tmp_path):
    layouts = {
        "imagefolder": _imagefolder(tmp_path / "f"),
        "webdataset": _webdataset(tmp_path / "w"),
    }
    datasets.Dataset.from_list(_official_rows(), features=_features()).save_to_disk(str(tmp_path / "d"))
    layouts["disk"] = tmp_path / "d"
    for name, path in layouts.items():
        data, _, _ = open_hf(str(path), streaming=True)
        stream = EditStream(data, buffer=10)
        got = sorted(stream.take(N), key=lambda e: e.edit_prompt)
        assert [e.edit_prompt for e in got] == [f"edit {i}" for i in range(N)], name
        assert got[1].edited_image.getpixel((3, 3)) == _image(1, True).getpixel((3, 3)), name


STREAM_WORKER = r"""
import json, sys
from accelerate import PartialState
from ip2p.data import open_edit_stream
state = PartialState(cpu=True)
source, out = sys.argv[1], sys.argv[2]
kw = dict(seed=5, buffer=2, rank=state.process_index, world=state.num_processes)
stream = open_edit_stream(source, **kw)
epoch0 = []
while True:
    ex = next(stream)
    if stream.epoch:
        break
    epoch0.append(ex.edit_prompt)
saved = stream.state_dict()
after = [e.edit_prompt for e in stream.take(5)]
resumed = open_edit_stream(source, **kw)
resumed.load_state_dict(json.loads(json.dumps(saved)))
again = [e.edit_prompt for e in resumed.take(5)]
with open(f"{out}/rank-{state.process_index}.json", "w") as f:
    json.dump({"epoch0": epoch0, "after": after, "again": again}, f)
"""


@pytest.mark.slow
def test_two_processes_see_every_example_once_and_resume_exactly(tmp_path):
    from launch import TWO_CPU_PROCESSES

    source = _shards(tmp_path / "data", 9, 3)
    (tmp_path / "worker.py").write_text(STREAM_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(
        [*TWO_CPU_PROCESSES, str(tmp_path / "worker.py"), source, str(tmp_path)],
        env=env,
        check=True,
        timeout=300,
    )
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert sorted(ranks[0]["epoch0"] + ranks[1]["epoch0"]) == sorted(f"edit {i}" for i in range(9))
    assert not set(ranks[0]["epoch0"]) & set(ranks[1]["epoch0"])
    for r in ranks:
        assert r["after"] == r["again"]


# -- training ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from ip2p.tiny import tiny_components

    c = tiny_components(edit=False)
    folder = tmp_path_factory.mktemp("base") / "t2i"
    StableDiffusionPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=c.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    return str(folder)


FAST = dict(
    resolution=16,
    min_resize=16,
    max_resize=16,
    train_batch_size=2,
    checkpointing_steps=1,
    validation_steps=0,
    num_validation_examples=0,
    device="cpu",
)


@pytest.mark.parametrize("layout", ["imagefolder", "webdataset", "disk"])
def test_one_training_step_with_no_data_flags(base_model, tmp_path, layout):
    """An imagefolder with metadata.jsonl (diffusers' users), WebDataset shards, a save_to_disk folder (a hub id's
    form on disk): found and read with no flags."""
    from ip2p.train import TrainConfig, train

    if layout == "imagefolder":
        root = _imagefolder(tmp_path / "folder")
    elif layout == "webdataset":
        root = _webdataset(tmp_path / "wds")
    else:
        root = tmp_path / "disk"
        datasets.Dataset.from_list(_official_rows(), features=_features()).save_to_disk(str(root))
    config = TrainConfig(
        base_model=base_model, data=[str(root)], output_dir=str(tmp_path / "run"), max_train_steps=1, **FAST
    )
    folder = train(config)
    assert (folder / "unet" / "config.json").is_file()
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["data_format"] == "auto"


def test_streamed_training_resumed_equals_uninterrupted(base_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    from ip2p.train import TrainConfig, train

    source = _shards(tmp_path / "data", 7, 3)
    kw = dict(
        base_model=base_model, data=[source], streaming=True, shuffle_buffer=3, max_train_steps=4, **FAST
    )
    train(TrainConfig(output_dir=str(tmp_path / "straight"), **kw))
    train(TrainConfig(output_dir=str(tmp_path / "cut"), max_minutes=0.0, **kw))  # stops after step 1
    assert sorted(p.name for p in (tmp_path / "cut" / "stream").iterdir()) == ["step-1.json"]
    train(TrainConfig(output_dir=str(tmp_path / "cut"), **kw))
    a = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint-4" / "unet.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "checkpoint-4" / "unet.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.slow
def test_streamed_training_on_two_processes_resumed_equals_uninterrupted(base_model, tmp_path):
    from launch import TWO_CPU_PROCESSES
    from safetensors.torch import load_file

    source = _shards(tmp_path / "data", 7, 2)
    flags = ["--base-model", base_model, "--data", source, "--streaming", "--shuffle-buffer", "3"]
    flags += ["--resolution", "16", "--min-resize", "16", "--max-resize", "16", "--train-batch-size", "2"]
    flags += ["--max-train-steps", "3", "--checkpointing-steps", "1", "--validation-steps", "0"]
    flags += ["--num-validation-examples", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def run(out, *extra):
        command = [*TWO_CPU_PROCESSES, "-m", "ip2p.cli", "train", *flags, "--output-dir", str(out), *extra]
        subprocess.run(command, env=env, check=True, timeout=300, capture_output=True)

    run(tmp_path / "straight")
    run(tmp_path / "cut", "--max-minutes", "0")  # stops after step 1, with a checkpoint and both positions
    states = json.loads((tmp_path / "cut" / "stream" / "step-1.json").read_text())
    assert [s["rank"] for s in states] == [0, 1] and all(s["offset"] for s in states)
    run(tmp_path / "cut")
    a = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint-3" / "unet.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "checkpoint-3" / "unet.safetensors")
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_read_benchmark_runs_both_readers_on_the_same_files(tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_read

    out = tmp_path / "read.json"
    assert (
        bench_read.main(
            ["--examples", "12", "--size", "16", "--per-file", "4", "--reads", "6", "--out", str(out)]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert [(r["layout"], r["decode"]) for r in rows] == [
        (a, d) for a in ("ours", "official") for d in (False, True)
    ]
    assert all(r["before_reads"] == r["datasets_reads"] == 6 and r["ratio"] > 0 for r in rows)
    assert capsys.readouterr().out.count("| ours |") == 2
