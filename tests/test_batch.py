"""ip2p.batch: planning items from an image, a folder or a JSONL list, resuming, and recording failures."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ip2p.batch import (
    BatchError,
    BatchItem,
    check_writable,
    edit_batch,
    image_suffixes,
    output_paths,
    plan_items,
)
from ip2p.edit_config import EditConfig


def _png(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_plans_a_folder_in_name_order_and_a_jsonl_with_relative_paths(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (_png(src / name) if name != "notes.txt" else (src / name).write_text("x"))
    items = plan_items(src, "make it blue", tmp_path / "out")
    assert [(i.image.name, i.output.name) for i in items] == [("a.jpg", "a.png"), ("b.png", "b.png")]
    listing = tmp_path / "jobs.jsonl"
    rows = [
        {"image": "in/a.jpg", "instruction": "x"},
        {"image": "in/b.png", "instruction": "y", "output": "o.png"},
    ]
    listing.write_text("\n".join(json.dumps(r) for r in rows))
    items = plan_items(listing, None, tmp_path / "out")
    assert items[0] == BatchItem(tmp_path / "in" / "a.jpg", "x", tmp_path / "out" / "000001_a.png")
    assert items[1].output == tmp_path / "out" / "o.png"


@pytest.mark.parametrize(
    "make, instruction, message",
    [
        (lambda p: p / "missing.png", "x", "no such file or folder"),
        (lambda p: p, None, "a folder input needs an INSTRUCTION"),
        (lambda p: _png(p / "one.png"), None, "missing INSTRUCTION"),
    ],
)
def test_bad_inputs_fail_before_any_model(tmp_path, make, instruction, message):
    with pytest.raises(BatchError, match=message):
        plan_items(make(tmp_path), instruction, tmp_path / "out.png")


def test_jsonl_lines_need_image_and_instruction(tmp_path):
    listing = tmp_path / "jobs.jsonl"
    listing.write_text('{"image": "a.png"}\n')
    with pytest.raises(BatchError, match="jobs.jsonl:1: each line needs 'image' and 'instruction'"):
        plan_items(listing, None, tmp_path)


def test_output_paths_and_writability(tmp_path):
    assert output_paths(tmp_path / "o.png", 1) == [tmp_path / "o.png"]
    assert output_paths(tmp_path / "o", 2) == [tmp_path / "o_0.png", tmp_path / "o_1.png"]
    check_writable(tmp_path / "new" / "deeper" / "o.png")  # folders to be made under a writable one
    (tmp_path / "d.png").mkdir()
    with pytest.raises(BatchError, match="is a folder"):
        check_writable(tmp_path / "d.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BatchError, match="cannot write here"):
        check_writable(tmp_path / "file" / "o.png")


def test_edit_batch_skips_done_items_records_failures_and_goes_on(tmp_path):
    from ip2p.pipeline import EditPipeline

    pipe = EditPipeline.from_pretrained("tiny", device="cpu")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    items = [
        BatchItem(_png(tmp_path / "a.png"), "x", tmp_path / "out" / "a.png"),
        BatchItem(tmp_path / "broken.png", "x", tmp_path / "out" / "broken.png"),
        BatchItem(_png(tmp_path / "c.png", 1), "x", tmp_path / "out" / "c.png"),
    ]
    config = EditConfig(num_inference_steps=1, resolution=32)
    report = edit_batch(pipe, items, config, seed=0, progress=False)
    assert [r["status"] for r in report.items] == ["ok", "failed", "ok"]
    assert report.failed == 1 and "broken.png" in report.items[1]["error"]
    assert (tmp_path / "out" / "c.png").is_file()
    again = edit_batch(pipe, items, config, seed=0, progress=False)
    assert [r["status"] for r in again.items] == ["skipped (exists)", "failed", "skipped (exists)"]
    assert again.summary(tmp_path / "out").startswith("edited 0, skipped 2, failed 1")
    with pytest.raises(Exception, match="broken.png"):  # one image (not a batch): the error is raised
        edit_batch(pipe, items[1:2], config, batch=False, progress=False)


def test_outputs_never_collide_inputs_sharing_a_stem_keep_their_extension(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("photo.png", "photo.jpg", "photo.gif", "other.webp"):
        _png(src / name)
    items = plan_items(src, "x", tmp_path / "out")
    assert {i.image.name: i.output.name for i in items} == {
        "photo.png": "photo_png.png",
        "photo.jpg": "photo_jpg.png",
        "photo.gif": "photo_gif.png",
        "other.webp": "other.png",
    }
    _png(src / "photo_jpg.png")  # a name the rule would give too: refused before any work, naming both
    with pytest.raises(BatchError, match="photo.jpg and .*photo_jpg.png would both be written"):
        plan_items(src, "x", tmp_path / "out")


def test_jsonl_outputs_that_coincide_are_refused(tmp_path):
    listing = tmp_path / "jobs.jsonl"
    rows = [
        {"image": "a.png", "instruction": "x", "output": "o.png"},
        {"image": "b.png", "instruction": "y", "output": "O.png"},
    ]
    listing.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(BatchError, match="a.png and .*b.png would both be written"):
        plan_items(listing, None, tmp_path / "out")


def test_recursive_folders_mirror_their_subfolders(tmp_path):
    src = tmp_path / "in"
    (src / "trip" / "day1").mkdir(parents=True)
    _png(src / "trip" / "day1" / "a.png")
    _png(src / "trip" / "a.png")
    with pytest.raises(BatchError, match="its subfolders have some: add --recursive"):
        plan_items(src, "x", tmp_path / "out")
    items = plan_items(src, "x", tmp_path / "out", recursive=True)
    assert [i.output.relative_to(tmp_path / "out").as_posix() for i in items] == [
        "trip/a.png",
        "trip/day1/a.png",
    ]


def test_one_image_into_an_existing_folder_goes_inside_it(tmp_path):
    image = _png(tmp_path / "cat.jpg")
    (tmp_path / "edited").mkdir()
    [item] = plan_items(image, "x", tmp_path / "edited")
    assert item.output == tmp_path / "edited" / "cat.png"


def test_folder_extensions_are_those_pillow_opens():
    suffixes = image_suffixes()
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".bmp", ".gif", ".tga", ".ppm", ".ico"} <= set(suffixes)
    assert ".pdf" not in suffixes  # Pillow writes PDFs, it does not read them


class _FlakyPipe:
    """The tiny pipeline, failing with an unexpected error on one instruction and warning on every call."""

    def __init__(self, pipe):
        self.pipe, self.components = pipe, pipe.components

    def __call__(self, image, instruction, config, **kw):
        import warnings

        warnings.warn("the instruction was truncated to the text encoder's length", stacklevel=2)
        warnings.warn("some library's deprecation", DeprecationWarning, stacklevel=2)
        if instruction == "boom":
            raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")
        return self.pipe(image, instruction, config, **kw)


def test_any_failure_of_an_item_is_recorded_and_the_batch_goes_on_warnings_once(tmp_path, capsys):
    from ip2p.pipeline import EditPipeline

    pipe = _FlakyPipe(EditPipeline.from_pretrained("tiny", device="cpu"))
    items = [
        BatchItem(_png(tmp_path / f"{name}.png", i), name, tmp_path / "out" / f"{name}.png")
        for i, name in enumerate(("a", "boom", "c"))
    ]
    shown = []
    report = edit_batch(
        pipe,
        items,
        EditConfig(num_inference_steps=1, resolution=32),
        seed=0,
        progress=False,
        warn=shown.append,
    )
    assert [r["status"] for r in report.items] == ["ok", "failed", "ok"]
    error = report.items[1]["error"]
    assert error.startswith(str(tmp_path / "boom.png")) and "RuntimeError" in error and "\n" not in error
    assert capsys.readouterr().err.strip() == f"ip2p: error: {error}"
    assert shown == ["the instruction was truncated to the text encoder's length"]  # once a run
    assert not (tmp_path / "out" / "boom.png").exists()


# -- the damaged corpus through `ip2p edit` (tests/damaged_images.py) ----------------------------------------------
def _corpus_batch(tmp_path, capsys, cases):
    """Edit a folder of corpus files with the tiny model in-process; check the batch's report line by line."""
    import os
    import stat

    from damaged_images import MAX_PIXELS

    from ip2p.cli import main

    src, out = tmp_path / "corpus", tmp_path / "edited"
    src.mkdir()
    for case in cases:
        (src / case.name).write_bytes(case.data)
    old = os.umask(0o027)
    try:
        argv = [
            "edit",
            str(src),
            "x",
            "-o",
            str(out),
            "--model",
            "tiny",
            "--steps",
            "1",
            "--resolution",
            "32",
        ]
        code = main([*argv, "--seed", "0", "--max-pixels", str(MAX_PIXELS), "--json"])
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    status = {record["image"]: record for record in report["items"]}
    suffixes = set(image_suffixes())  # Pillow registers no extension for some formats it reads (SPIDER)
    cases = [c for c in cases if Path(c.name).suffix in suffixes]
    assert len(status) == len(cases)  # every file with such an extension is an item
    errors = [line for line in captured.err.splitlines() if line.startswith("ip2p: error: ")]
    assert "Traceback" not in captured.err
    assert len(errors) == report["failed"] and code == (1 if report["failed"] else 0)
    for case in cases:
        record = status[str(src / case.name)]
        if record["status"] == "failed":
            assert case.expect != "ok", record["error"]
            assert record["error"].startswith(f"{src / case.name}: ") and "\n" not in record["error"]
            assert f"ip2p: error: {record['error']}" in errors
            assert not any(Path(p).exists() for p in record["outputs"])
        else:
            assert record["status"] == "ok" and case.expect != "refused", case.name
            [written] = record["outputs"]
            assert Image.open(written).size[0] > 0  # a whole PNG
            assert stat.S_IMODE(os.stat(written).st_mode) == 0o640  # 0o666 less the umask
    names = [p.name for p in out.rglob("*")]
    assert len(names) == len(set(names)) == sum(r["status"] == "ok" for r in report["items"])
    assert not [n for n in names if n.startswith(".")]  # no temporary leftovers
    return report


def test_the_damaged_corpus_through_a_batch_finishes_with_every_item_accounted_for(tmp_path, capsys):
    from damaged_images import corpus

    cases = corpus(full=False)
    # every valid or refused file; a third of the damaged ones (the slow test takes them all)
    chosen = [c for i, c in enumerate(cases) if c.expect != "either" or i % 3 == 0]
    report = _corpus_batch(tmp_path, capsys, chosen)
    assert report["failed"] > 0 and any(r["status"] == "ok" for r in report["items"])


@pytest.mark.slow
def test_the_full_damaged_corpus_through_a_batch(tmp_path, capsys):
    from damaged_images import corpus

    _corpus_batch(tmp_path, capsys, corpus(full=True))
