"""MagicBrush and Emu Edit evaluation on fixtures in the hubs' exact schemas, tiny random CLIP and DINO models,
and every metric checked against a computation of its own (numpy on the saved outputs, transformers' own image
processors and models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ip2p.evaluate.bench_metrics import ClipEncoder, DinoEncoder, pixel_distances
from ip2p.evaluate.bench_run import BenchConfig, compare_runs, run_benchmark
from ip2p.evaluate.benchmarks import read_emu_edit, read_magicbrush
from ip2p.evaluate.items import EvaluationError
from ip2p.evaluate.methods import Method, reference_method
from ip2p.models import ModelLoadError

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _noise(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory):
    """A tiny random ViT in the layout of facebook/dino-vits16 (no pooler), saved as a folder."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
    )
    folder = tmp_path_factory.mktemp("dino") / "tiny-dino"
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


MB_SESSIONS = {"101": 2, "202": 1, "303": 3}  # img_id -> turns


@pytest.fixture(scope="module")
def magicbrush(tmp_path_factory):
    """MagicBrush in the hub's schema (img_id, turn_index, source_img, mask_img, instruction, target_img) as a
    save_to_disk folder and as Parquet, with a local_captions.json as the test set's."""
    import datasets

    rows = {k: [] for k in ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")}
    captions: dict[str, dict[str, str]] = {}
    for n, (img_id, turns) in enumerate(MB_SESSIONS.items()):
        source = _noise((48, 40), seed=10 * n)
        for t in range(1, turns + 1):
            target = _noise((36, 36), seed=10 * n + t)
            rows["img_id"].append(img_id)
            rows["turn_index"].append(t)
            rows["source_img"].append(source)
            rows["mask_img"].append(Image.new("RGB", source.size, "white"))
            rows["instruction"].append(f"make turn {t} of {img_id} red")
            rows["target_img"].append(target)
            captions.setdefault(img_id, {})[f"{img_id}-output{t}.png"] = f"a red thing, turn {t}"
            source = target  # the next turn's ground-truth source is this turn's target
    features = datasets.Features(
        {
            "img_id": datasets.Value("string"),
            "turn_index": datasets.Value("int32"),
            "source_img": datasets.Image(),
            "mask_img": datasets.Image(),
            "instruction": datasets.Value("string"),
            "target_img": datasets.Image(),
        }
    )
    data = datasets.Dataset.from_dict(rows, features=features)
    root = tmp_path_factory.mktemp("magicbrush")
    datasets.DatasetDict({"test": data}).save_to_disk(str(root / "disk"))
    (root / "parquet" / "data").mkdir(parents=True)
    data.to_parquet(str(root / "parquet" / "data" / "test-00000-of-00001.parquet"))
    (root / "local_captions.json").write_text(json.dumps(captions))
    return root


EMU_TASKS = ("background", "global", "style", "remove", "add", "local", "texture")


@pytest.fixture(scope="module")
def emu_edit(tmp_path_factory):
    """The Emu Edit test set's schema, hub splits named as the published generations name them: the hub's
    "validation" holds the rows whose own split column says "test"."""
    import datasets

    features = datasets.Features(
        {
            "instruction": datasets.Value("string"),
            "image": datasets.Image(),
            "task": datasets.Value("string"),
            "split": datasets.Value("string"),
            "idx": datasets.Value("int64"),
            "hash": datasets.Value("string"),
            "input_caption": datasets.Value("string"),
            "output_caption": datasets.Value("string"),
        }
    )

    def rows(split: str, n: int, start: int):
        return datasets.Dataset.from_dict(
            {
                "instruction": [f"edit {i}" for i in range(start, start + n)],
                "image": [_noise((40, 32), seed=100 + i) for i in range(start, start + n)],
                "task": [EMU_TASKS[i % 3] for i in range(start, start + n)],
                "split": [split] * n,
                "idx": list(range(start, start + n)),
                "hash": [f"h{i}" for i in range(start, start + n)],
                "input_caption": [f"a photo {i}" for i in range(start, start + n)],
                "output_caption": [f"a red photo {i}" for i in range(start, start + n)],
            },
            features=features,
        )

    root = tmp_path_factory.mktemp("emu") / "disk"
    datasets.DatasetDict({"validation": rows("test", 5, 0), "test": rows("validation", 2, 5)}).save_to_disk(
        str(root)
    )
    return root


def _brighten() -> Method:
    """A deterministic method: every pixel + 40 (clipped), so the metrics are far from trivial."""

    def edit(images, items, setting, seeds):
        return [
            Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + 40, 0, 255).astype(np.uint8))
            for im in images
        ]

    return Method("brighten", [{}], edit)


def _clip_reference(clip_dir, images, texts=None):
    """Embeddings by transformers' own CLIPImageProcessor (short side, centre crop, OpenAI stats) and CLIPModel."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
    )
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt").pixel_values
        out = model.get_image_features(pixel_values=pixels)
        image = out if isinstance(out, torch.Tensor) else out.pooler_output
        if texts is None:
            return image
        tok = AutoTokenizer.from_pretrained(clip_dir)(texts, padding=True, return_tensors="pt")
        out = model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        return image, out if isinstance(out, torch.Tensor) else out.pooler_output


def _dino_reference(vit_dir, images):
    """DINO's preprocessing by transformers' processor (short side 37 = round(32*256/224), crop 32, ImageNet)."""
    from transformers import CLIPImageProcessor, ViTModel

    processor = CLIPImageProcessor(
        size={"shortest_edge": 37},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    model = ViTModel.from_pretrained(vit_dir, add_pooling_layer=False).eval()
    with torch.no_grad():
        return model(
            pixel_values=processor(images=images, return_tensors="pt").pixel_values
        ).last_hidden_state[:, 0]


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_pixel_distances_resize_the_output_to_the_reference():
    out, ref = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 0))
    assert pixel_distances(out, ref) == pytest.approx({"l1": 1 / 3, "l2": 1 / 3})


def test_readers_of_both_layouts_agree(magicbrush):
    disk, read = read_magicbrush(str(magicbrush / "disk"), captions=str(magicbrush / "local_captions.json"))
    parquet, read_pq = read_magicbrush(
        str(magicbrush / "parquet"), captions=str(magicbrush / "local_captions.json")
    )
    assert [len(s) for s in disk] == list(MB_SESSIONS.values()) and read["split"] == read_pq[
        "split"
    ] == "test"
    for a, b in zip([it for s in disk for it in s], [it for s in parquet for it in s], strict=True):
        assert (a.id, a.turn, a.instruction, a.caption) == (b.id, b.turn, b.instruction, b.caption)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert np.array_equal(np.asarray(a.target), np.asarray(b.target))
    assert disk[0][1].caption == "a red thing, turn 2" and disk[0][1].id == "101-2"
    with pytest.raises(EvaluationError, match="--split: .* has the splits test"):
        read_magicbrush(str(magicbrush / "disk"), split="dev")


def test_the_released_test_folder_reads_as_the_hub_rows(tmp_path, magicbrush):
    """MagicBrush's released test set: edit_sessions.json, images/<img_id>/<img_id>-input.png, -output<k>.png,
    -mask<k>.png, and local_captions.json beside them (found without --captions)."""
    hub, _ = read_magicbrush(str(magicbrush / "disk"), captions=str(magicbrush / "local_captions.json"))
    root = tmp_path / "test"
    listing = {}
    for session in hub:
        img_id = session[0].session
        folder = root / "images" / img_id
        folder.mkdir(parents=True)
        session[0].image.save(folder / f"{img_id}-input.png")
        listing[img_id] = []
        for it in session:
            it.target.save(folder / f"{img_id}-output{it.turn}.png")
            Image.new("RGB", it.image.size, "white").save(folder / f"{img_id}-mask{it.turn}.png")
            source = f"{img_id}-input.png" if it.turn == 1 else f"{img_id}-output{it.turn - 1}.png"
            listing[img_id].append(
                {
                    "input": source,
                    "mask": f"{img_id}-mask{it.turn}.png",
                    "output": f"{img_id}-output{it.turn}.png",
                    "instruction": it.instruction,
                }
            )
    (root / "edit_sessions.json").write_text(json.dumps(listing))
    (root / "local_captions.json").write_text((magicbrush / "local_captions.json").read_text())
    released, read = read_magicbrush(str(root / "images"))
    assert read["format"] == "MagicBrush test folder" and read["captions"].endswith("local_captions.json")
    for a, b in zip([it for s in hub for it in s], [it for s in released for it in s], strict=True):
        assert (a.id, a.session, a.turn, a.instruction, a.caption) == (
            b.id,
            b.session,
            b.turn,
            b.instruction,
            b.caption,
        )
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert np.array_equal(np.asarray(a.target), np.asarray(b.target))
    assert [len(s) for s in read_magicbrush(str(root), limit=2)[0]] == [2, 1]
    (root / "images" / "202" / "202-input.png").unlink()
    with pytest.raises(ValueError, match="202-input.png"):
        read_magicbrush(str(root))


def test_a_dataset_of_another_schema_is_refused_in_one_line(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"img_id": ["1"], "instruction": ["x"]}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(EvaluationError, match="lacks turn_index, source_img, mask_img, target_img"):
        read_magicbrush(str(tmp_path / "d"))


def test_magicbrush_single_turn_metrics_match_independent_computations(
    tmp_path, magicbrush, tiny_clip_dir, tiny_vit_dir
):
    config = BenchConfig(
        output=str(tmp_path / "run"),
        benchmark="magicbrush",
        data=str(magicbrush / "disk"),
        captions=str(magicbrush / "local_captions.json"),
        resolution=32,
        clip_model=str(tiny_clip_dir),
        dino_model=str(tiny_vit_dir),
        progress=False,
    )
    result = run_benchmark(config, [_brighten(), reference_method("target")])
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * sum(MB_SESSIONS.values())
    sessions, _ = read_magicbrush(str(magicbrush / "disk"), captions=str(magicbrush / "local_captions.json"))
    items = {it.id: it for s in sessions for it in s}
    mine = [r for r in records if r["method"] == "brighten"]
    outputs = [Image.open(tmp_path / "run" / r["output"]).convert("RGB") for r in mine]
    targets = [items[r["item"]].target for r in mine]
    for r, out, target in zip(mine, outputs, targets, strict=True):
        # L1, L2: nn.L1Loss/MSELoss of ToTensor() images after gen_img.resize(gt_img.size), here in numpy
        resized = np.asarray(out.resize(target.size), dtype=np.float64) / 255
        diff = resized - np.asarray(target, dtype=np.float64) / 255
        assert r["l1"] == pytest.approx(np.abs(diff).mean(), abs=1e-6)
        assert r["l2"] == pytest.approx((diff**2).mean(), abs=1e-6)
    e_out, e_text = _clip_reference(tiny_clip_dir, outputs, [items[r["item"]].caption for r in mine])
    e_target = _clip_reference(tiny_clip_dir, targets)
    np.testing.assert_allclose([r["clip_i"] for r in mine], _cos(e_out, e_target), atol=1e-5)
    np.testing.assert_allclose([r["clip_t"] for r in mine], _cos(e_out, e_text), atol=1e-5)
    dino = _cos(_dino_reference(tiny_vit_dir, outputs), _dino_reference(tiny_vit_dir, targets))
    np.testing.assert_allclose([r["dino"] for r in mine], dino, atol=1e-5)
    # the target itself: L1 0, CLIP-I and DINO 1
    exact = [r for r in records if r["method"] == "target"]
    assert all(
        r["l1"] == 0 and r["clip_i"] == pytest.approx(1, abs=1e-5) and r["dino"] == pytest.approx(1, abs=1e-5)
        for r in exact
    )
    row = next(r for r in result["summary"] if r["method"] == "brighten")
    assert row["n"] == len(mine) and row["l1"] == pytest.approx(np.mean([r["l1"] for r in mine]))
    assert row["clip_t/turn3"] == pytest.approx(next(r["clip_t"] for r in mine if r["turn"] == 3))
    assert "| brighten |" in (tmp_path / "run" / "summary.md").read_text()
    assert "clip_i" in (tmp_path / "run" / "summary.csv").read_text().splitlines()[0]
    # a rerun resumes: nothing is edited again
    calls = []
    again = _brighten()
    again.edit = lambda *a, **k: calls.append(1) or []
    run_benchmark(config, [again, reference_method("target")])
    assert not calls and len((tmp_path / "run" / "records.jsonl").read_text().splitlines()) == len(records)


def test_magicbrush_multi_turn_chains_each_session_from_its_own_outputs(tmp_path, magicbrush):
    seen: dict[str, Image.Image] = {}

    def edit(images, items, setting, seeds):
        for im, it in zip(images, items, strict=True):
            seen[it.id] = im.copy()
        return [Image.fromarray(255 - np.asarray(im)) for im in images]  # invert

    config = BenchConfig(
        output=str(tmp_path / "multi"),
        benchmark="magicbrush-multi",
        data=str(magicbrush / "parquet"),
        resolution=32,
        progress=False,
    )
    result = run_benchmark(config, [Method("invert", [{}], edit)])
    records = {
        r["item"]: r for r in map(json.loads, (tmp_path / "multi" / "records.jsonl").read_text().splitlines())
    }
    # turn 2 of session 101 is edited from the method's own turn-1 output, not from the ground-truth source
    first = Image.open(tmp_path / "multi" / records["101-1"]["output"])
    assert np.array_equal(np.asarray(seen["101-2"]), np.asarray(first))
    assert np.array_equal(
        np.asarray(seen["303-3"]), np.asarray(Image.open(tmp_path / "multi" / records["303-2"]["output"]))
    )
    row = result["summary"][0]
    final = [records[i] for i in ("101-2", "202-1", "303-3")]
    assert row["n"] == 3 and row["l1"] == pytest.approx(np.mean([r["l1"] for r in final]))
    assert row["n/turn1"] == 3 and row["n/turn3"] == 1 and "clip_i" not in row  # no CLIP model given


def test_emu_edit_pins_the_split_by_the_rows_column_and_measures_against_the_input(
    tmp_path, emu_edit, tiny_clip_dir, tiny_vit_dir
):
    items, read = read_emu_edit(str(emu_edit), "test")
    assert [it.id for it in items] == ["0", "1", "2", "3", "4"] and read[
        "selected_by"
    ] == "the rows' split column"
    assert [it.id for it in read_emu_edit(str(emu_edit), "validation")[0]] == ["5", "6"]
    config = BenchConfig(
        output=str(tmp_path / "emu"),
        benchmark="emu-edit",
        data=str(emu_edit),
        resolution=32,
        clip_model=str(tiny_clip_dir),
        dino_model=str(tiny_vit_dir),
        progress=False,
    )
    result = run_benchmark(config, [_brighten(), reference_method("input")])
    records = [json.loads(line) for line in (tmp_path / "emu" / "records.jsonl").read_text().splitlines()]
    mine = [r for r in records if r["method"] == "brighten"]
    by_id = {it.id: it for it in items}
    inputs = [by_id[r["item"]].image for r in mine]
    outputs = [Image.open(tmp_path / "emu" / r["output"]).convert("RGB") for r in mine]
    for r, i, o in zip(mine, inputs, outputs, strict=True):
        diff = np.asarray(o.resize(i.size), dtype=np.float64) / 255 - np.asarray(i, dtype=np.float64) / 255
        assert r["l1"] == pytest.approx(np.abs(diff).mean(), abs=1e-6)
    e_in, t_in = _clip_reference(tiny_clip_dir, inputs, [by_id[r["item"]].input_caption for r in mine])
    e_out, t_out = _clip_reference(tiny_clip_dir, outputs, [by_id[r["item"]].caption for r in mine])
    unit = [x / x.norm(dim=-1, keepdim=True) for x in (e_in, e_out, t_in, t_out)]
    np.testing.assert_allclose(
        [r["clip_dir"] for r in mine], _cos(unit[1] - unit[0], unit[3] - unit[2]), atol=1e-5
    )
    np.testing.assert_allclose([r["clip_img"] for r in mine], _cos(e_in, e_out), atol=1e-5)
    np.testing.assert_allclose([r["clip_out"] for r in mine], _cos(e_out, t_out), atol=1e-5)
    dino = _cos(_dino_reference(tiny_vit_dir, inputs), _dino_reference(tiny_vit_dir, outputs))
    np.testing.assert_allclose([r["dino"] for r in mine], dino, atol=1e-5)
    row = next(r for r in result["summary"] if r["method"] == "brighten")
    adds = [r["clip_dir"] for r in mine if r["task"] == "global"]
    assert row["n"] == 5 and row["clip_dir/global"] == pytest.approx(np.mean(adds))
    assert not any(k.startswith("n/turn") for k in row)  # one turn each: no per-turn means
    none = next(r for r in result["summary"] if r["method"] == "input")
    assert none["l1"] == 0 and none["clip_img"] == pytest.approx(1, abs=1e-5)
    with pytest.raises(EvaluationError, match="no target images"):
        run_benchmark(
            BenchConfig(output=str(tmp_path / "t"), benchmark="emu-edit", data=str(emu_edit)),
            [reference_method("target")],
        )


def test_emu_edit_split_falls_back_to_the_hub_name_and_refuses_an_unknown_one(tmp_path, emu_edit):
    import datasets

    data = datasets.load_from_disk(str(emu_edit))
    relabelled = datasets.DatasetDict(
        {name: rows.map(lambda r: {"split": ""}) for name, rows in data.items()}
    )
    relabelled.save_to_disk(str(tmp_path / "unlabelled"))
    items, read = read_emu_edit(str(tmp_path / "unlabelled"), "test")
    assert [it.id for it in items] == ["5", "6"] and read["selected_by"] == "the hub split's name"
    assert read["expected_rows"] == 3589 and read["rows"] == 2
    with pytest.raises(EvaluationError, match="--split: no row of .* is in split 'dev'"):
        read_emu_edit(str(emu_edit), "dev")


def test_metric_models_offline_name_their_flag():
    with pytest.raises(ModelLoadError, match="--clip-model PATH"):
        ClipEncoder.from_pretrained("no-such-org/no-such-clip")
    with pytest.raises(ModelLoadError, match="--dino-model PATH"):
        DinoEncoder.from_pretrained("no-such-org/no-such-dino")


def test_cli_benchmark_with_an_editor_and_compare(
    tmp_path, magicbrush, tiny_model_dir, tiny_clip_dir, tiny_vit_dir, capsys
):
    from ip2p.cli import main

    argv = [
        "evaluate",
        "--benchmark",
        "magicbrush",
        "--data",
        str(magicbrush / "parquet"),
        "--captions",
        str(magicbrush / "local_captions.json"),
        "--model",
        str(tiny_model_dir),
        "--clip-model",
        str(tiny_clip_dir),
        "--dino-model",
        str(tiny_vit_dir),
        "--steps",
        "2",
        "--resolution",
        "32",
        "--device",
        "cpu",
        "--no-progress",
        "-o",
        str(tmp_path / "a"),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| ip2p | image_guidance_scale=1.5,text_guidance_scale=7.5 | 6 |" in text
    assert main([*argv[:-1], str(tmp_path / "b"), "--references", "input"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    table = capsys.readouterr().out
    assert "| a: ip2p |" in table and "| b: ip2p |" in table and "| b: input |" in table
    assert main(["evaluate", "--compare", str(tmp_path / "nothing")]) == 1
    assert "holds no summary.jsonl" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "c"), "--clip-model", "no-such-org/clip"]) == 1
    assert "--clip-model PATH" in capsys.readouterr().err
    with pytest.raises(EvaluationError):
        compare_runs([str(tmp_path / "nothing")])


@pytest.mark.slow  # three fresh processes (one alone, two under accelerate), as the other two-process tests
def test_two_processes_write_the_records_of_one(tmp_path, magicbrush, tiny_clip_dir):
    """`accelerate launch` splits the sessions over processes (a chain stays in one); together they write what
    one process writes."""
    import os
    import subprocess
    import sys

    from launch import TWO_CPU_PROCESSES

    common = [
        "evaluate",
        "--benchmark",
        "magicbrush-multi",
        "--data",
        str(magicbrush / "disk"),
        "--methods",
        "none",
        "--references",
        "input,target",
        "--clip-model",
        str(tiny_clip_dir),
        "--dino-model",
        "none",
        "--resolution",
        "32",
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    runs = {}
    for name, prefix in (("one", [sys.executable]), ("two", TWO_CPU_PROCESSES)):
        done = subprocess.run(
            [*prefix, "-m", "ip2p.cli", *common, "-o", str(tmp_path / name)],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = {
            (r["method"], r["item"]): r
            for path in sorted((tmp_path / name).glob("records*.jsonl"))
            for r in map(json.loads, path.read_text().splitlines())
        }
    assert len(list((tmp_path / "two").glob("records.rank*.jsonl"))) == 2
    assert runs["one"].keys() == runs["two"].keys() and len(runs["one"]) == 2 * sum(MB_SESSIONS.values())
    for key, row in runs["one"].items():
        assert runs["two"][key]["clip_i"] == pytest.approx(row["clip_i"], abs=1e-5)
        assert runs["two"][key]["seed"] == row["seed"]
    one = (tmp_path / "one" / "summary.csv").read_text()
    assert one.splitlines()[0] == (tmp_path / "two" / "summary.csv").read_text().splitlines()[0]
