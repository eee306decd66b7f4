import json

import datasets
import pytest
from PIL import Image

from ip2p.datasets import (
    Columns,
    DatasetError,
    OriginalFolderDataset,
    ParquetEditDataset,
    open_edit_dataset,
    write_parquet_shard,
)


def _rows(n):
    return [
        {
            "original_prompt": f"a {i}",
            "original_image": Image.new("RGB", (8, 8), (i, 0, 0)),
            "edit_prompt": f"edit {i}",
            "edited_prompt": f"b {i}",
            "edited_image": Image.new("RGB", (8, 8), (0, i, 0)),
            "seed": i,
        }
        for i in range(n)
    ]


def test_shards_are_read_by_hf_datasets_with_images_decoded(tmp_path):
    write_parquet_shard(_rows(3), tmp_path / "shard-0.parquet")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "*.parquet"), split="train")
    assert ds.column_names == [
        "original_prompt",
        "original_image",
        "edit_prompt",
        "edited_prompt",
        "edited_image",
        "seed",
    ]
    assert isinstance(ds[2]["original_image"], Image.Image) and ds[2]["original_image"].getpixel((0, 0)) == (
        2,
        0,
        0,
    )
    assert not list(tmp_path.glob(".*")), "no temporary file may remain"


def test_reader_indexes_several_shards(tmp_path):
    write_parquet_shard(_rows(3), tmp_path / "a.parquet")
    write_parquet_shard(_rows(2), tmp_path / "b.parquet")
    ds = open_edit_dataset(tmp_path)
    assert len(ds) == 5
    ex = ds[4]
    assert ex.edit_prompt == "edit 1" and ex.edited_image.getpixel((0, 0)) == (0, 1, 0)
    assert ex.original_prompt == "a 1" and ex.extra == {"seed": 1}


def test_official_schema_written_by_hf_datasets(tmp_path):
    """A file as the official dataset ships it (written by `datasets` itself, images as Image features)."""
    rows = _rows(2)
    features = datasets.Features(
        {
            "original_prompt": datasets.Value("string"),
            "original_image": datasets.Image(),
            "edit_prompt": datasets.Value("string"),
            "edited_prompt": datasets.Value("string"),
            "edited_image": datasets.Image(),
        }
    )
    datasets.Dataset.from_list([{k: r[k] for k in features} for r in rows], features=features).to_parquet(
        str(tmp_path / "train-00000-of-00001.parquet")
    )
    ds = open_edit_dataset(str(tmp_path / "train-*.parquet"))
    assert len(ds) == 2 and ds[1].edit_prompt == "edit 1"
    assert ds[1].original_image.getpixel((0, 0)) == (1, 0, 0)


def test_diffusers_example_column_names_and_custom_columns(tmp_path):
    rows = [
        {
            "input_image": r["original_image"],
            "edit_prompt": r["edit_prompt"],
            "edited_image": r["edited_image"],
        }
        for r in _rows(2)
    ]
    write_parquet_shard(rows, tmp_path / "x.parquet", image_columns=("input_image", "edited_image"))
    assert open_edit_dataset(tmp_path / "x.parquet")[0].original_image.size == (8, 8)
    rows = [
        {"src": r["original_image"], "text": r["edit_prompt"], "dst": r["edited_image"]} for r in _rows(2)
    ]
    write_parquet_shard(rows, tmp_path / "y.parquet", image_columns=("src", "dst"))
    ds = ParquetEditDataset([tmp_path / "y.parquet"], Columns("src", "text", "dst"))
    assert ds[1].edit_prompt == "edit 1"
    with pytest.raises(DatasetError, match="missing column"):
        ParquetEditDataset([tmp_path / "y.parquet"])


def test_original_repository_folder_format(tmp_path):
    for i, name in enumerate(["0000000", "0000001"]):
        folder = tmp_path / name
        folder.mkdir()
        key = "input" if i == 0 else "caption"  # both keys exist in the wild
        (folder / "prompt.json").write_text(
            json.dumps({key: f"cap {i}", "edit": f"do {i}", "output": f"out {i}"})
        )
        for seed in (11, 22):
            Image.new("RGB", (8, 8), (seed, 0, 0)).save(folder / f"{seed}_0.jpg", quality=100)
            Image.new("RGB", (8, 8), (0, seed, 0)).save(folder / f"{seed}_1.jpg", quality=100)
        (folder / "metadata.jsonl").write_text("")
    (tmp_path / "seeds.json").write_text(json.dumps([["0000000", ["11", "22"]], ["0000001", ["22"]]]))
    ds = open_edit_dataset(tmp_path)
    assert isinstance(ds, OriginalFolderDataset) and len(ds) == 3
    ex = ds[2]
    assert (ex.original_prompt, ex.edit_prompt, ex.edited_prompt) == ("cap 1", "do 1", "out 1")
    assert ex.extra == {"seed": 22, "dir": "0000001"}


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        open_edit_dataset(tmp_path / "missing.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no seeds.json, save_to_disk files, metadata.jsonl, .parquet or .tar"):
        open_edit_dataset(tmp_path / "empty")
    (tmp_path / "bad.parquet").write_text("x")
    with pytest.raises(DatasetError, match="not a readable Parquet"):
        open_edit_dataset(tmp_path / "bad.parquet")


# -- the damaged corpus as image cells (tests/damaged_images.py) ---------------------------------------------------
@pytest.mark.filterwarnings("ignore::ip2p.imaging.ImageWarning")
def test_damaged_image_cells_are_named_errors_never_tracebacks(tmp_path):
    from damaged_images import corpus

    # (the corpus's oversized headers are below the datasets' pixel limit: ip2p.imaging's default)
    cases = [c for c in corpus(full=False) if not c.name.startswith("oversized")]
    good = {"bytes": _png_bytes(), "path": None}
    rows = [
        {"original_image": {"bytes": c.data, "path": None}, "edit_prompt": c.name, "edited_image": good}
        for c in cases
    ]
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "pics" / "there.png")
    rows.append(
        {
            "original_image": {"bytes": None, "path": "pics/there.png"},
            "edit_prompt": "relative",
            "edited_image": good,
        }
    )
    rows.append(
        {
            "original_image": {"bytes": None, "path": "pics/gone.png"},
            "edit_prompt": "gone",
            "edited_image": good,
        }
    )
    shard = write_parquet_shard(rows, tmp_path / "shard.parquet")
    dataset = ParquetEditDataset([shard])
    failed = {}
    for i in range(len(dataset)):
        try:
            example = dataset[i]
        except DatasetError as exc:  # anything else fails the test with its traceback
            assert str(exc).startswith(f"{shard} row {i}: ") and "\n" not in str(exc)
            failed[rows[i]["edit_prompt"]] = exc.kind
            continue
        assert example.original_image.mode == "RGB"
    assert "relative" not in failed  # a relative path is read from the shard's folder
    assert failed.pop("gone") == "missing"
    for case in cases:
        if case.expect == "ok":
            assert case.name not in failed
        elif case.expect == "refused":
            assert failed[case.name] == (case.kind or failed[case.name])
    assert set(failed.values()) >= {"not-image", "corrupt", "unsupported"}


def _png_bytes():
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buffer, format="PNG")
    return buffer.getvalue()
