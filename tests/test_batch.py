"""ip2p.batch: planning items from an image, a folder or a JSONL list, resuming, and recording failures."""

import json

import numpy as np
import pytest
from PIL import Image

from ip2p.batch import BatchError, BatchItem, check_writable, edit_batch, output_paths, plan_items
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
