"""`ip2p evaluate` on tiny components: metrics, sweeps, the SDEdit baseline, outputs, resume, and bad input."""

from __future__ import annotations

import json

import pytest
from launch import TWO_CPU_PROCESSES
from PIL import Image

from ip2p.evaluate import (
    EvalConfig,
    EvalItem,
    EvaluationError,
    Method,
    curve_margin,
    editor_method,
    evaluate,
    guidance_grid,
    item_seed,
    load_test_set,
    measure_batch,
    pixel_metrics,
    plot_curves,
    read_records,
    reference_method,
    sdedit_method,
    setting_key,
    summarize,
    to_unit_tensor,
)
from ip2p.pairs.clip_score import ClipScorer
from ip2p.pipeline import EditConfig, EditPipeline


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir):
    return ClipScorer.from_pretrained(tiny_clip_dir)


@pytest.fixture(scope="module")
def pipe():
    from ip2p.tiny import tiny_components

    return EditPipeline(tiny_components(edit=True), device="cpu")


def _items(n: int = 3) -> list[EvalItem]:
    from ip2p.toy.render import render

    items = load_test_set(f"toy:{n}")
    for it in items:  # the tiny models work at 32 px
        it.image, it.target = render(it.edit.before, size=32), render(it.edit.after, size=32)
    return items


def test_toy_test_set_is_held_out_balanced_and_deterministic():
    from ip2p.toy.data import training_scenes
    from ip2p.toy.edits import EDIT_TYPES

    items = load_test_set("toy:12")
    again = load_test_set("toy:12")
    assert [i.instruction for i in items] == [i.instruction for i in again]
    assert [i.edit_type for i in items[:6]] == list(EDIT_TYPES) or len({i.edit_type for i in items}) >= 5
    assert not {i.edit.before for i in items} & set(training_scenes(2000))
    assert all(i.target is not None and i.input_caption and i.output_caption for i in items)


def test_toy_validation_split_is_disjoint_from_the_test_set():
    val = load_test_set("toy-val:200")
    test = load_test_set("toy:300")
    assert len(val) == 200 and val[0].id == "toy-val-0000"
    assert not {i.edit.before for i in val} & {i.edit.before for i in test}
    assert len({i.edit_type for i in val[:6]}) >= 5
    with pytest.raises(EvaluationError, match="1 to 200"):
        load_test_set("toy-val:201")
    with pytest.raises(EvaluationError, match="1 to 300"):
        load_test_set("toy:301")  # the test set stops where the validation split begins


def test_brief_toy_test_sets_change_only_the_captions():
    from ip2p.toy.captions import Brief, parse_brief

    for full, brief in (
        (load_test_set("toy:12"), load_test_set("toy-brief:12")),
        (load_test_set("toy-val:6"), load_test_set("toy-val-brief:6")),
    ):
        assert [i.instruction for i in brief] == [i.instruction for i in full]
        assert [i.edit for i in brief] == [i.edit for i in full]
        for b, f in zip(brief, full, strict=True):
            assert b.image.tobytes() == f.image.tobytes() and b.target.tobytes() == f.target.tobytes()
        assert brief[0].id.replace("-brief", "") == full[0].id and "-brief-" in brief[0].id
        for item in brief:
            assert parse_brief(item.output_caption) == Brief.of(item.edit.after)
            assert parse_brief(item.input_caption) == Brief.of(item.edit.before)
            assert "left" not in item.output_caption and "small" not in item.output_caption


def test_pixel_metrics_and_clip_metrics_behave(scorer):
    a = to_unit_tensor([Image.new("RGB", (32, 32), (0, 0, 0))])
    b = to_unit_tensor([Image.new("RGB", (32, 32), (51, 51, 51))])
    m = pixel_metrics(a, b)
    assert float(m["l1"][0]) == pytest.approx(0.2) and float(m["psnr"][0]) == pytest.approx(13.979, abs=1e-3)
    items = _items(2)
    inputs = [it.image for it in items]
    same = measure_batch(scorer, items, inputs, inputs)  # an edit that changes nothing
    assert all(r["clip_image"] == pytest.approx(1.0, abs=1e-5) for r in same)
    assert all(r["psnr"] < 99 and r["oracle_edit"] == 0.0 for r in same)  # the input is not the target
    exact = measure_batch(scorer, items, inputs, [it.target for it in items])  # the exact edit
    assert all(
        r["oracle_success"] == 1.0 and r["l1"] == 0.0 and r["clip_target"] == pytest.approx(1.0, abs=1e-5)
        for r in exact
    )
    assert all("clip_direction" in r and "clip_text" in r for r in exact)


def test_edit_batch_matches_single_edits(pipe):
    items = _items(3)
    images, texts, seeds = [it.image for it in items], [it.instruction for it in items], [5, 6, 7]
    cfg = EditConfig(num_inference_steps=3, resolution=32)
    batch = pipe.edit_batch(images, texts, seeds, cfg)
    for image, text, seed, got in zip(images, texts, seeds, batch, strict=True):
        want = pipe(image, text, cfg, seed=seed).images[0]
        diff = (to_unit_tensor([got]) - to_unit_tensor([want])).abs().max()
        assert diff <= 2 / 255
    with pytest.raises(ValueError, match="one prepared size"):
        pipe.edit_batch([images[0], images[0].resize((64, 32))], texts[:2], seeds[:2], cfg)


def test_evaluate_writes_records_summary_plot_and_resumes(tmp_path, pipe, scorer):
    from ip2p.tiny import tiny_components

    items = _items(3)
    methods = [
        editor_method(
            pipe, EditConfig(num_inference_steps=2, resolution=32), guidance_grid("grid", [7.5], [1.0, 2.0])
        ),
        sdedit_method(tiny_components(edit=False), strengths=(0.3, 0.9), steps=4, device="cpu"),
    ]
    config = EvalConfig(output=str(tmp_path / "run"), resolution=32, batch_size=2, examples=2, progress=False)
    result = evaluate(config, methods, scorer=scorer, items=items)
    out = tmp_path / "run"
    records = read_records(out)
    assert len(records) == 3 * 4  # items x (2 editor settings + 2 SDEdit strengths)
    assert {r["seed"] for r in records} == {item_seed(0, i) for i in range(3)}  # same seeds for every method
    summary = result["summary"]
    assert [r["method"] for r in summary] == ["ip2p", "ip2p", "sdedit", "sdedit"]
    for row in summary:
        assert row["n"] == 3 and {
            "clip_direction",
            "clip_image",
            "clip_text",
            "psnr",
            "oracle_success",
        } <= set(row)
    assert (out / "plot.png").stat().st_size > 1000 and (out / "examples.png").is_file()
    assert (out / "summary.csv").read_text().startswith("method,setting")
    assert json.loads((out / "run.json").read_text())["clip_preprocessing"].startswith("images in [0, 1]")

    # A killed run: drop the last records (and leave a partial line); the rerun redoes exactly those.
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    (out / "records.jsonl").write_text("".join(lines[:-3]) + lines[-3][:10])
    calls = []
    sdedit = methods[1]

    def counting(images, its, setting, seeds):
        calls.append(len(images))
        return sdedit.edit(images, its, setting, seeds)

    methods[1] = Method("sdedit", methods[1].settings, counting, methods[1].describe)
    evaluate(config, methods, scorer=scorer, items=items)
    assert sum(calls) == 3
    again = read_records(out)
    assert len(again) == 12
    key = {(r["method"], r["setting"], r["item"]) for r in again}
    assert len(key) == 12
    redone = {(r["method"], r["setting"], r["item"]): r for r in again}
    first = {(r["method"], r["setting"], r["item"]): r for r in records}
    for k, r in redone.items():  # same seeds, same edits, same numbers
        assert r["clip_image"] == pytest.approx(first[k]["clip_image"], abs=1e-5)


def test_a_run_with_other_settings_is_refused(tmp_path, pipe, scorer):
    items = _items(1)
    method = editor_method(
        pipe, EditConfig(num_inference_steps=1, resolution=32), guidance_grid("grid", [7.5], [1.5])
    )
    evaluate(
        EvalConfig(output=str(tmp_path), resolution=32, progress=False), [method], scorer=scorer, items=items
    )
    with pytest.raises(EvaluationError, match="other settings"):
        evaluate(
            EvalConfig(output=str(tmp_path), resolution=32, seed=1, progress=False),
            [method],
            scorer=scorer,
            items=items,
        )


def test_sweeps_and_curve_margin():
    paper = guidance_grid("paper")
    assert [s["image_guidance_scale"] for s in paper] == [1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2]
    assert {s["text_guidance_scale"] for s in paper} == {7.5}
    assert len(guidance_grid("grid", [5, 7.5], [1, 1.5, 2])) == 6
    rescaled = guidance_grid("grid", [3], [2], rescale=[0, 0.7])
    assert rescaled == [
        {"text_guidance_scale": 3.0, "image_guidance_scale": 2.0},  # phi 0 keeps the paper's setting name
        {"text_guidance_scale": 3.0, "image_guidance_scale": 2.0, "guidance_rescale": 0.7},
    ]
    with pytest.raises(EvaluationError, match="guidance rescale"):
        guidance_grid("grid", [3], [2], rescale=[2])
    with pytest.raises(EvaluationError):
        guidance_grid("grid")
    assert setting_key({"text_guidance_scale": 7.5, "image_guidance_scale": 1.2}) == (
        "image_guidance_scale=1.2,text_guidance_scale=7.5"
    )
    summary = [
        {"method": "a", "clip_direction": 0.1, "clip_image": 0.9, "oracle_success": 0.6},
        {"method": "a", "clip_direction": 0.3, "clip_image": 0.8, "oracle_success": 0.7},
        {"method": "b", "clip_direction": 0.2, "clip_image": 0.7, "oracle_success": 0.2},
        {"method": "b", "clip_direction": 0.5, "clip_image": 0.5, "oracle_success": 0.3},
    ]
    m = curve_margin(summary, "a", "b")
    assert m["compared_points"] == 1 and m["margins"][0] == pytest.approx(0.15) and m["above_everywhere"]
    assert m["best_oracle_success/a"] == 0.7
    assert not curve_margin(summary, "b", "a")["above_everywhere"]
    # (0.5, 0.5) lies right of every point of a: outside the overlap, and beaten on neither axis at once
    assert (m["dominated"], m["points"]) == (1, 2)
    for row, (edit, kept) in zip(summary, [(0.9, 0.6), (0.95, 0.5), (0.5, 0.55), (0.6, 0.3)], strict=True):
        row.update(oracle_edit=edit, oracle_preserved=kept)
    o = curve_margin(summary, "a", "b", plane="oracle")
    assert o["plane"] == "oracle" and o["compared_points"] == 0 and o["dominated"] == 2
    with pytest.raises(ValueError, match="unknown plane"):
        curve_margin(summary, "a", "b", plane="pixels")


def test_plot_adds_the_oracle_plane_where_rows_have_it(tmp_path):
    from PIL import Image

    rows = [
        {"method": "a", "setting": "s=1", "clip_direction": 0.1, "clip_image": 0.9},
        {"method": "b", "setting": "s=2", "clip_direction": 0.2, "clip_image": 0.7},
    ]
    clip_only = Image.open(plot_curves(rows, tmp_path / "clip.png")).size
    for r in rows:
        r.update(oracle_edit=0.5, oracle_preserved=0.5)
    both = Image.open(plot_curves(rows, tmp_path / "both.png", title="t")).size
    assert both[0] > 1.8 * clip_only[0] and both[1] == clip_only[1]


def test_summary_reports_oracle_rates_per_edit_type():
    records = [
        {
            "method": "m",
            "setting": "x=1",
            "item": str(i),
            "edit_type": t,
            "oracle_success": s,
            "clip_image": 1.0,
        }
        for i, (t, s) in enumerate([("add", 1.0), ("add", 0.0), ("remove", 1.0)])
    ]
    (row,) = summarize(records, [Method("m", [{"x": 1.0}], lambda *a: [])])
    assert row["oracle_success/add"] == 0.5 and row["oracle_success/remove"] == 1.0
    assert row["oracle_success"] == pytest.approx(2 / 3)


def test_summary_and_margin_per_edit_type():
    records = [
        {"method": m, "setting": "x=1", "item": str(i), "edit_type": t, "clip_direction": d, "clip_image": c}
        for i, (m, t, d, c) in enumerate(
            [("a", "add", 0.4, 0.7), ("a", "add", 0.6, 0.8), ("a", "style", 0.9, 0.9), ("b", "add", 0.5, 0.6)]
        )
    ]
    methods = [Method(m, [{"x": 1.0}], lambda *a: []) for m in "ab"]
    a, b = summarize(records, methods)
    assert a["clip_direction/add"] == pytest.approx(0.5) and a["clip_image/style"] == 0.9
    assert "clip_image/style" not in b and "oracle_success/add" not in a  # only what was measured
    m = curve_margin([a, b], "a", "b", edit_type="add")
    assert m["edit_type"] == "add" and (m["dominated"], m["points"]) == (0, 1)  # equal direction: not beaten
    assert m["margins"] == [pytest.approx(0.15)]
    assert curve_margin([a, b], "a", "b", edit_type="style")["points"] == 0


def test_reference_points_bound_the_planes(tmp_path, pipe, scorer):
    """No edit is at the CLIP plane's corner; the target is every edit right; its autoencoder round trip is the
    target as a latent editor can draw it (here an untrained one's)."""
    items = _items(3)
    refs = [reference_method(n, pipe.components.vae) for n in ("input", "target", "target-vae")]
    config = EvalConfig(output=str(tmp_path / "e"), test_set="toy:3", resolution=32, examples=1)
    rows = {r["method"]: r for r in evaluate(config, refs, scorer=scorer, items=items)["summary"]}
    assert rows["input"]["setting"] == "" and rows["input"]["clip_image"] == pytest.approx(1.0, abs=1e-5)
    assert (
        rows["input"]["clip_direction"] == pytest.approx(0.0, abs=1e-5) and rows["input"]["oracle_edit"] == 0
    )
    assert rows["target"]["psnr"] == 100.0 and rows["target"]["oracle_success"] == 1.0
    assert rows["target"]["clip_target"] == pytest.approx(1.0, abs=1e-5)
    assert rows["target-vae"]["l1"] > 0 and rows["target-vae"]["psnr"] < 100.0  # the tiny VAE is untrained
    assert (tmp_path / "e" / "images" / "target" / f"{items[0].id}.png").is_file()
    Image.open(plot_curves(list(rows.values()), tmp_path / "refs.png"))  # single points, drawn as stars
    with pytest.raises(EvaluationError, match="unknown reference"):
        reference_method("oracle")
    with pytest.raises(EvaluationError, match="autoencoder"):
        reference_method("target-vae")
    no_target = [EvalItem("x", items[0].image, "do it")]
    with pytest.raises(EvaluationError, match="needs target images; test item x"):
        evaluate(EvalConfig(output=str(tmp_path / "f")), refs[1:2], items=no_target)
    assert not (tmp_path / "f").exists()  # refused before anything was written


def test_jsonl_test_set(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "a.png")
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "b.png")
    rows = [
        {
            "image": "a.png",
            "instruction": "make it blue",
            "input_caption": "red",
            "output_caption": "blue",
            "target": "b.png",
        },
        {"image": "b.png", "edit": "make it red"},
    ]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_test_set(str(tmp_path / "t.jsonl"))
    assert [i.instruction for i in items] == ["make it blue", "make it red"]
    assert items[0].target is not None and items[1].output_caption is None
    (tmp_path / "bad.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(EvaluationError, match="bad.jsonl:1"):
        load_test_set(str(tmp_path / "bad.jsonl"))
    with pytest.raises(EvaluationError, match="toy:N"):
        load_test_set("toy:many")


@pytest.mark.slow
def test_cli_evaluate_tiny(tmp_path, tiny_model_dir, tiny_clip_dir, capsys):
    from ip2p.cli import main
    from ip2p.models import save_edit_model
    from ip2p.tiny import tiny_components

    base = tmp_path / "base"
    save_edit_model(tiny_components(edit=False), base)
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    (tmp_path / "t.jsonl").write_text(
        json.dumps(
            {
                "image": "a.png",
                "instruction": "make it blue",
                "input": "a red square",
                "output": "a blue square",
            }
        )
        + "\n"
    )
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--model",
        str(tiny_model_dir),
        "--base",
        str(base),
        "--test-set",
        str(tmp_path / "t.jsonl"),
        "-o",
        str(out),
        "--clip",
        str(tiny_clip_dir),
        "--steps",
        "2",
        "--resolution",
        "32",
        "--image-guidance",
        "1,2",
        "--strengths",
        "0.5,0.8",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "sdedit" in text and "ip2p" in text and (out / "plot.png").is_file()
    assert "clip plane: ip2p beats sdedit on both axes at" in text and "oracle plane" not in text  # no oracle
    assert len(read_records(out)) == 2 + 2
    assert main([*argv[:-1], "--methods", "nope"]) == 1
    assert "unknown" in capsys.readouterr().err
    assert main([*argv[:-1], "--references", "input,nope"]) == 1
    assert "--references: unknown ['nope']" in capsys.readouterr().err
    assert main([*argv, "--references", "target"]) == 1  # the JSONL item has no target image
    assert "needs target images" in capsys.readouterr().err
    refs = tmp_path / "refs"
    argv[argv.index(str(out))] = str(refs)
    assert main([*argv, "--methods", "ip2p", "--references", "input"]) == 0
    text = capsys.readouterr().out
    assert "input" in text and "clip plane" not in text  # one method: nothing to compare
    assert {r["method"] for r in read_records(refs)} == {"ip2p", "input"}
    Image.new("RGB", (32, 32), "blue").save(tmp_path / "b.png")
    row = json.loads((tmp_path / "t.jsonl").read_text())
    (tmp_path / "t.jsonl").write_text(json.dumps({**row, "target": "b.png"}) + "\n")
    argv[argv.index(str(refs))] = str(tmp_path / "with-target")
    assert main([*argv, "--references", "input,target,target-vae"]) == 0
    text = capsys.readouterr().out
    assert "for reference, target beats sdedit on both axes at" in text and "target-vae beats" in text
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_model_dir),
                "-o",
                str(out),
                "--test-set",
                str(tmp_path / "no.jsonl"),
                "--clip",
                "none",
                "--methods",
                "ip2p",
            ]
        )
        == 1
    )
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_give_the_records_of_one(tmp_path, tiny_model_dir, tiny_clip_dir):
    """`accelerate launch` splits the items over processes; together they write what one process writes."""
    import os
    import subprocess
    import sys

    from ip2p.toy.render import render

    rows = []
    for i, it in enumerate(load_test_set("toy:4")):
        render(it.edit.before, size=32).save(tmp_path / f"{i}.png")
        rows.append(
            {
                "image": f"{i}.png",
                "instruction": it.instruction,
                "input": it.input_caption,
                "output": it.output_caption,
            }
        )
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        "evaluate",
        "--model",
        str(tiny_model_dir),
        "--methods",
        "ip2p",
        "--test-set",
        str(tmp_path / "t.jsonl"),
        "--clip",
        str(tiny_clip_dir),
        "--steps",
        "2",
        "--resolution",
        "32",
        "--image-guidance",
        "1.5",
        "--device",
        "cpu",
        "--no-progress",
        "--batch-size",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "ip2p.cli", *common, "-o", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            *TWO_CPU_PROCESSES,
            "-m",
            "ip2p.cli",
            *common,
            "-o",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted((tmp_path / "two").glob("records*.jsonl")) != [tmp_path / "two" / "records.jsonl"]
    a = {r["item"]: r for r in read_records(tmp_path / "one")}
    b = {r["item"]: r for r in read_records(tmp_path / "two")}
    assert a.keys() == b.keys() and len(a) == 4
    for k in a:
        assert b[k]["seed"] == a[k]["seed"]
        assert b[k]["clip_image"] == pytest.approx(a[k]["clip_image"], abs=1e-4)
    assert (tmp_path / "two" / "summary.csv").is_file()


def test_evaluate_flags_come_from_a_torch_free_config():
    """`ip2p evaluate --help` builds its flags from EvalRunConfig without importing torch; every flag is kept."""
    import subprocess
    import sys

    code = """
import argparse, json, sys
from ip2p.evaluate.config import EvalRunConfig
from ip2p.flags import add_config_flags, config_overrides
p = argparse.ArgumentParser()
add_config_flags(p, EvalRunConfig, exclude=("output", "model", "model_config", "device", "dtype"))
args = p.parse_args(["--text-guidance", "3:5:1", "--no-progress", "--references", "input", "--limit", "2"])
print(json.dumps({"torch": "torch" in sys.modules, "flags": sorted(p._option_string_actions),
                  "set": config_overrides(args, EvalRunConfig)}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not got["torch"]
    for flag in (
        "--test-set --limit --base --methods --references --sweep --text-guidance --image-guidance --strengths "
        "--sdedit-guidance --steps --scheduler --guidance-rescale --resolution --clip --batch-size --seed "
        "--examples --no-progress --metrics"
    ).split():
        assert flag in got["flags"], flag
    assert got["set"] == {
        "limit": 2,
        "references": "input",
        "text_guidance": [3.0, 4.0, 5.0],
        "progress": False,
    }
