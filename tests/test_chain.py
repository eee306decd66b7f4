"""Chained edits (ip2p.chain), the toy multi-turn test set and `ip2p evaluate --chain-mode` / `ip2p edit --chain`."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from ip2p.chain import (
    ChainOptions,
    chain_turn,
    changed_mask,
    check_chain_options,
    dilate_mask,
    edit_chain,
    paste_changed,
)
from ip2p.cli import main


@pytest.fixture(scope="module")
def toy_pipe():
    from ip2p.pipeline import EditPipeline

    return EditPipeline.from_pretrained("toy", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def scene_image():
    from ip2p.toy import random_scene, render

    return render(random_scene(random.Random(3)), size=64)


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_paste_keeps_every_pixel_the_edit_changed_by_no_more_than_the_threshold():
    rng = np.random.default_rng(0)
    before = rng.integers(60, 200, (16, 16, 3)).astype(np.uint8)
    after = before.astype(np.int16) + rng.integers(-20, 21, before.shape)  # noise: at most 20/255 < 0.1
    after[4:7, 5:9] += 90  # a real change
    after = np.clip(after, 0, 255).astype(np.uint8)
    out, mask = paste_changed(Image.fromarray(before), Image.fromarray(after), threshold=0.1, dilate=0)
    out = np.asarray(out)
    assert mask[4:7, 5:9].all() and mask.sum() == 12
    assert np.array_equal(out[~mask], before[~mask])  # unchanged beyond the threshold: the input exactly
    assert np.array_equal(out[mask], after[mask])
    _, grown = paste_changed(Image.fromarray(before), Image.fromarray(after), threshold=0.1, dilate=1)
    assert grown.sum() == 5 * 6 and grown[3:8, 4:10].all()  # one pixel around the change


def test_changed_mask_takes_the_largest_channel_difference_and_checks_sizes():
    a = Image.new("RGB", (4, 4), (100, 100, 100))
    b = Image.new("RGB", (4, 4), (100, 100, 100))
    b.putpixel((1, 2), (100, 160, 100))  # only green changes, by 60/255
    assert changed_mask(a, b, threshold=0.2, dilate=0).sum() == 1
    assert changed_mask(a, b, threshold=0.3, dilate=0).sum() == 0
    with pytest.raises(ValueError, match="sizes"):
        changed_mask(a, Image.new("RGB", (5, 4)))
    assert dilate_mask(np.eye(3, dtype=bool), 0).sum() == 3


@pytest.mark.parametrize(
    ("mode", "threshold", "dilate", "message"),
    [("twice", 0.1, 1, "unknown chain mode"), ("paste", 1.5, 1, "threshold"), ("paste", 0.1, -1, "dilation")],
)
def test_bad_chain_options_are_one_line_errors(mode, threshold, dilate, message):
    with pytest.raises(ValueError, match=message):
        check_chain_options(mode, threshold, dilate)
    with pytest.raises(ValueError, match=message):
        ChainOptions(mode, threshold, dilate)


def test_plain_chain_equals_calling_the_pipeline_on_each_result(toy_pipe, scene_image):
    instructions = ["make the shapes outlined", "paint the background white"]
    turns = edit_chain(toy_pipe, scene_image, instructions, seed=11)
    first = toy_pipe(scene_image, instructions[0], seed=11)
    second = toy_pipe(first.images[0], instructions[1], seed=12)
    assert [t.info["chain_turn"] for t in turns] == [1, 2]
    assert np.array_equal(_array(turns[0].images[0]), _array(first.images[0]))
    assert np.array_equal(_array(turns[1].images[0]), _array(second.images[0]))
    assert turns[0].seed == 11 and turns[1].seed == 12


def test_paste_chain_keeps_the_input_where_the_edit_did_not_change_it(toy_pipe, scene_image):
    plain = toy_pipe(scene_image, "paint the background white", seed=5).images[0]
    pasted = chain_turn(toy_pipe, scene_image, "paint the background white", mode="paste", seed=5)
    mask = changed_mask(scene_image, plain)
    out, before, raw = _array(pasted.images[0]), _array(scene_image), _array(plain)
    assert np.array_equal(out[~mask], before[~mask])
    assert np.array_equal(out[mask], raw[mask])
    assert pasted.info["chain_mode"] == "paste"
    assert pasted.info["changed_fraction"] == pytest.approx(mask.mean())


def test_a_chain_needs_instructions_and_one_image_a_turn(toy_pipe, scene_image):
    with pytest.raises(ValueError, match="list of one or more"):
        edit_chain(toy_pipe, scene_image, "make it red")
    with pytest.raises(ValueError, match="num_images"):
        edit_chain(toy_pipe, scene_image, ["make the shapes outlined"], num_images=2)


# -- the toy multi-turn test set -------------------------------------------------------------------------------
def test_multiturn_targets_are_the_exact_composed_scenes():
    from ip2p.evaluate.items import load_test_set
    from ip2p.toy.data import heldout_scenes
    from ip2p.toy.oracle import read_scene, scene_attributes

    items = load_test_set("toy-multiturn:4")
    assert len(items) == 12 and [it.id for it in items[:3]] == [f"toy-multiturn-0000-t{k}" for k in (1, 2, 3)]
    assert items[0].edit.before == heldout_scenes()["mixed"][0]  # a held-out scene, never trained on
    for start in range(0, 12, 3):
        turns = items[start : start + 3]
        assert len({it.chain for it in turns}) == 1
        assert len({it.edit_type for it in turns}) == 3  # no turn undoes another
        for before, after in zip(turns, turns[1:], strict=False):
            assert after.edit.before == before.edit.after  # each turn edits the scene composed so far
        for it in turns:
            assert scene_attributes(read_scene(it.target)) == scene_attributes(it.edit.after)
            assert scene_attributes(read_scene(it.image)) == scene_attributes(it.edit.before)
    assert load_test_set("toy-multiturn:4")[5].instruction == items[5].instruction  # deterministic
    assert load_test_set("toy-multiturn-val:1")[0].edit.before == heldout_scenes()["mixed"][300]


def test_the_oracle_judges_a_chained_turn_against_the_composed_target():
    from ip2p.evaluate.items import load_test_set
    from ip2p.toy.testsets import oracle_verdicts

    items = load_test_set("toy-multiturn:1")
    exact = oracle_verdicts(items, [it.image for it in items], [it.target for it in items])
    assert all(v["oracle_success"] == 1.0 for v in exact)
    # after turn 2, the image of turn 1's target lacks turn 2's edit: a failure
    late = oracle_verdicts(items[1:2], [items[1].image], [items[0].target])
    assert late[0]["oracle_success"] == 0.0


@pytest.mark.slow  # kept out of the default suite for its time; CI runs it
def test_evaluate_chain_modes_turn_by_turn(tmp_path):
    from ip2p.evaluate.config import EvalRunConfig, run_evaluation
    from ip2p.evaluate.run import read_records

    out = tmp_path / "chains"
    config = EvalRunConfig(
        output=str(out),
        model="toy",
        test_set="toy-multiturn:2",
        chain_mode="plain,paste",
        clip="none",
        methods="ip2p",
        device="cpu",
        progress=False,
    )
    result = run_evaluation(config)
    rows = {(r["mode"], r["turn"]): r for r in result["summary"]}
    assert set(rows) == {(m, t) for m in ("plain", "paste") for t in (1, 2, 3)}
    assert all(r["n"] == 2 and 0.0 <= r["oracle_success"] <= 1.0 for r in rows.values())
    assert "after turn 3" in result["report"] and (out / "examples.png").is_file()
    assert len(read_records(out)) == 12
    assert run_evaluation(config)["summary"] == result["summary"]  # a rerun finds every record done


def test_evaluate_chain_mode_refuses_a_single_turn_test_set(tmp_path):
    from ip2p.evaluate.config import EvalRunConfig, run_evaluation
    from ip2p.evaluate.items import EvaluationError

    config = EvalRunConfig(
        output=str(tmp_path / "x"),
        model="toy",
        test_set="toy:2",
        chain_mode="plain",
        clip="none",
        methods="ip2p",
        device="cpu",
        progress=False,
    )
    with pytest.raises(EvaluationError, match="multi-turn"):
        run_evaluation(config)


# -- ip2p edit --chain --------------------------------------------------------------------------------------
def test_cli_chain_writes_every_turn_with_its_mode(tmp_path, scene_image, toy_pipe):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    scene_image.save(src)
    code = main(
        [
            "edit",
            str(src),
            "make the shapes outlined",
            "--chain",
            "paint the background white",
            "--chain-mode",
            "paste",
            "--model",
            "toy",
            "--device",
            "cpu",
            "--seed",
            "7",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    first, final = Image.open(tmp_path / "out_turn1.png"), Image.open(out)
    assert first.text["ip2p:chain_turn"] == "1" and final.text["ip2p:chain_turn"] == "2"
    assert final.text["ip2p:chain_mode"] == "paste" and final.text["ip2p:seed"] == "8"
    expected = edit_chain(
        toy_pipe,
        scene_image,
        ["make the shapes outlined", "paint the background white"],
        mode="paste",
        seed=7,
    )
    assert np.array_equal(_array(final), _array(expected[-1].images[0]))


def test_jsonl_items_chain_a_list_of_instructions(tmp_path, scene_image):
    scene_image.save(tmp_path / "a.png")
    listing = tmp_path / "edits.jsonl"
    rows = [{"image": "a.png", "instruction": ["make the shapes outlined", "paint the background white"]}]
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert (
        main(["edit", str(listing), "-o", str(out), "--model", "toy", "--device", "cpu", "--seed", "1"]) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["000001_a.png", "000001_a_turn1.png"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--paste-threshold", "1.5"],
        ["--chain-mode", "sideways"],
        ["--chain", "make it red", "--num-images", "2"],
    ],
)
def test_cli_refuses_bad_chain_flags(tmp_path, scene_image, extra, capsys):
    src = tmp_path / "in.png"
    scene_image.save(src)
    try:
        code = main(["edit", str(src), "x", "-o", str(tmp_path / "o.png"), "--model", "toy", *extra])
    except SystemExit as exc:  # argparse's own refusal of an unknown choice
        code = exc.code
    assert code == 2
    assert not (tmp_path / "o.png").exists()


# -- the web app ----------------------------------------------------------------------------------------------
def test_app_paste_mode_edits_the_result_next_keeping_its_unchanged_pixels(toy_pipe, scene_image, tmp_path):
    from ip2p.app import FIXED_GUIDANCE, FIXED_SEED, MODEL_SCHEDULER, EditorApp

    app = EditorApp(toy_pipe)
    src = tmp_path / "scene.png"
    scene_image.save(src)
    d = app.defaults
    settings = [
        d.steps,
        FIXED_SEED,
        5,
        FIXED_GUIDANCE,
        d.text_guidance,
        d.image_guidance,
        MODEL_SCHEDULER,
        64,
    ]

    def edit(before, instruction, session, mode):
        return app.edit(
            before, instruction, *settings, session, None, False, mode, progress=lambda *a, **k: None
        )

    out, *_, session, _, _ = edit({"path": str(src)}, "make the shapes outlined", None, "paste")
    before, _, _, session, _, _ = app.continue_from_result(session)
    final, *_, session, _, _ = edit(before, "paint the background white", session, "paste")
    expected = edit_chain(
        toy_pipe,
        scene_image,
        ["make the shapes outlined", "paint the background white"],
        mode="paste",
        seed=5,
    )
    assert np.array_equal(_array(Image.open(out)), _array(expected[0].images[0]))
    # the app's second edit draws from the seed box (5), the chain's second turn from seed + 1
    raw = toy_pipe(Image.open(before), "paint the background white", seed=5).images[0]
    pasted = paste_changed(Image.open(before), raw)[0]
    assert np.array_equal(_array(Image.open(final)), _array(pasted))
    import gradio as gr

    with pytest.raises(gr.Error, match="chaining mode"):
        edit({"path": str(src)}, "make the shapes outlined", None, "sideways")
