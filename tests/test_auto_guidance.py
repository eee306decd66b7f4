"""Automatic guidance (ip2p.auto_guidance): the choice, its fit, its cost, and `--guidance auto` in edit and evaluate."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from ip2p.auto_guidance import (
    GUIDANCE_FILE,
    GuidanceError,
    GuidancePredictor,
    auto_edit,
    neighbour_votes,
    pick_settings,
    unet_evaluations,
)
from ip2p.cli import main

GRID = [(3.0, 2.0), (6.0, 1.5)]
# two kinds of instruction, each succeeding at one setting of the grid only
REMOVALS = ["remove the circle", "delete the square", "erase the triangle", "remove the red star"]
STYLES = ["make the shapes outlined", "outline the shapes", "make the shapes hollow", "fill the shapes"]


@pytest.fixture(scope="module")
def toy_pipe():
    from ip2p.pipeline import EditPipeline

    return EditPipeline.from_pretrained("toy", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def fitted(toy_pipe):
    success = [[1.0, 0.0]] * len(REMOVALS) + [[0.0, 1.0]] * len(STYLES)
    return GuidancePredictor.fit(toy_pipe, REMOVALS + STYLES, success, GRID, neighbours=(1, 3))


def test_votes_are_the_neighbours_mean_success_and_ties_go_to_the_best_fixed_setting():
    train = torch.eye(3)  # three unit features
    success = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[0.0, 0.0, 1.0]])
    assert neighbour_votes(query, train, success, k=1).tolist() == [[0.0, 1.0]]
    loo = neighbour_votes(train, train, success, k=1, exclude_self=True)  # a row never votes for itself
    assert loo.shape == (3, 2)
    assert pick_settings(torch.tensor([[0.5, 0.5]]), prior=torch.tensor([0.2, 0.7])) == [1]
    assert pick_settings(torch.tensor([[0.5, 0.5]]), prior=torch.tensor([0.7, 0.2])) == [0]


def test_the_fitted_predictor_chooses_by_the_kind_of_instruction(fitted, toy_pipe):
    assert fitted.neighbours in (1, 3) and set(fitted.report["leave_one_out_success"]) == {1, 3}
    chosen = fitted.choose(toy_pipe, ["remove the green circle", "make the shapes outlined"])
    assert chosen == [GRID[0], GRID[1]]
    assert fitted.best_fixed() in GRID and fitted.report["best_fixed_success"] == pytest.approx(0.5)


def test_the_choice_is_always_a_setting_of_the_grid(fitted, toy_pipe):
    words = ["make", "the", "circle", "green", "remove", "square", "background", "white", "add", "a", "star"]
    rng = random.Random(0)
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(20)]
    assert all(c in GRID for c in fitted.choose(toy_pipe, texts))


def test_auto_edit_reports_its_cost_and_makes_exactly_that_many_unet_evaluations(fitted, toy_pipe):
    from ip2p.toy import random_scene, render

    rows = []
    hook = toy_pipe.components.unet.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        image = render(random_scene(random.Random(1)), size=64)
        result = auto_edit(toy_pipe, fitted, image, "remove the circle", seed=0)
    finally:
        hook.remove()
    info = result.info["auto_guidance"]
    steps = result.config.num_inference_steps
    assert (result.config.text_guidance_scale, result.config.image_guidance_scale) == GRID[0]
    assert info["unet_evaluations"] == unet_evaluations(steps) == steps * 3 == sum(rows)
    assert info["extra_unet_evaluations"] == 0 and info["grid"] == [list(s) for s in GRID]
    assert unet_evaluations(4, candidates=9) == 108


def test_predictor_files_round_trip_and_bad_ones_are_one_line_errors(fitted, toy_pipe, tmp_path):
    path = fitted.save(tmp_path / GUIDANCE_FILE)
    again = GuidancePredictor.load(path)
    assert again.settings == fitted.settings and again.neighbours == fitted.neighbours
    assert again.choose(toy_pipe, ["delete the star"]) == fitted.choose(toy_pipe, ["delete the star"])
    (tmp_path / "bad.json").write_text('{"settings": [[3, 2]]}')
    with pytest.raises(GuidanceError, match="bad.json"):
        GuidancePredictor.load(tmp_path / "bad.json")
    with pytest.raises(GuidanceError, match="rows"):
        GuidancePredictor(GRID, ["a", "b"], [[1.0, 0.0]])
    with pytest.raises(GuidanceError, match="no auto_guidance.json"):
        GuidancePredictor.from_pretrained(str(tmp_path / "nowhere"))


def test_the_bundled_toy_editor_carries_a_predictor_within_its_grid(toy_pipe):
    guide = GuidancePredictor.from_pretrained("toy")
    assert len(guide.settings) >= 2 and len(guide.instructions) == len(guide.success)
    chosen = guide.choose(
        toy_pipe, ["make the circle green", "remove the square", "paint the background white"]
    )
    assert all(c in guide.settings for c in chosen)


def test_cli_edit_with_automatic_guidance(tmp_path, capsys):
    import json

    from ip2p.toy import random_scene, render

    src, out = tmp_path / "in.png", tmp_path / "out.png"
    render(random_scene(random.Random(2)), size=64).save(src)
    args = ["edit", str(src), "remove the circle", "--guidance", "auto", "--model", "toy", "-o", str(out)]
    assert main([*args, "--json"]) == 0
    text = Image.open(out).text
    scales = (float(text["ip2p:text_guidance_scale"]), float(text["ip2p:image_guidance_scale"]))
    assert scales in GuidancePredictor.from_pretrained("toy").settings
    (item,) = json.loads(capsys.readouterr().out)["items"]
    assert item["auto_guidance"]["unet_evaluations"] == 4 * 3  # the toy editor's 4 steps, 3 branches
    assert item["auto_guidance"]["extra_unet_evaluations"] == 0
    # explicit scales contradict --guidance auto; a model without a predictor is refused before it loads
    assert main(["edit", str(src), "x", "--guidance", "auto", "--text-guidance", "5", "-o", str(out)]) == 2
    assert (
        main(["edit", str(src), "x", "--guidance", "auto", "--model", "tiny", "-o", str(tmp_path / "t.png")])
        == 1
    )


@pytest.mark.slow
def test_evaluate_the_automatic_guidance_method_and_fit_a_predictor(tmp_path):
    from ip2p.evaluate.config import EvalRunConfig, run_evaluation

    base = dict(model="toy", test_set="toy-val:6", clip="none", device="cpu", progress=False)
    path = tmp_path / GUIDANCE_FILE
    notes = []
    run_evaluation(
        EvalRunConfig(
            output=str(tmp_path / "sweep"),
            methods="ip2p",
            sweep="grid",
            text_guidance=[3.0, 6.0],
            image_guidance=[2.0],
            fit_auto_guidance=str(path),
            **base,
        ),
        note=notes.append,
    )
    guide = GuidancePredictor.load(path)
    assert guide.settings == [(3.0, 2.0), (6.0, 2.0)] and len(guide.instructions) == 6
    assert any("auto guidance" in n for n in notes)
    result = run_evaluation(EvalRunConfig(output=str(tmp_path / "auto"), methods="ip2p-auto", **base))
    (row,) = result["summary"]
    assert row["method"] == "ip2p-auto" and row["n"] == 6 and 0.0 <= row["oracle_success"] <= 1.0


def test_app_automatic_guidance_writes_the_chosen_scales_back(fitted, toy_pipe, tmp_path):
    import gradio as gr

    from ip2p.app import AUTO_GUIDANCE, FIXED_SEED, MODEL_SCHEDULER, EditorApp
    from ip2p.toy import random_scene, render

    src = tmp_path / "scene.png"
    render(random_scene(random.Random(4)), size=64).save(src)
    settings = [4, FIXED_SEED, 1, AUTO_GUIDANCE, 9.0, 1.1, MODEL_SCHEDULER, 64]
    app = EditorApp(toy_pipe, guidance=fitted)
    radios = [b for b in app.blocks().blocks.values() if getattr(b, "elem_id", None) == "guidance-mode"]
    assert [c[1] for c in radios[0].choices][-1] == AUTO_GUIDANCE  # offered where the model has a predictor
    out, details, seed, text, image, *_ = app.edit(
        {"path": str(src)}, "make the shapes hollow", *settings, None, progress=lambda *a, **k: None
    )
    assert (text, image) == GRID[1] and Image.open(out).text["ip2p:text_guidance_scale"] == str(GRID[1][0])
    without = EditorApp(toy_pipe)
    with pytest.raises(gr.Error, match="auto_guidance.json"):
        without.edit(
            {"path": str(src)}, "make the shapes hollow", *settings, None, progress=lambda *a, **k: None
        )


def test_app_http_api_takes_automatic_guidance_and_the_chain_mode(fitted, toy_pipe, tmp_path):
    import gradio as gr
    import numpy as np

    from ip2p.app import MODEL_SCHEDULER, EditorApp
    from ip2p.chain import paste_changed
    from ip2p.toy import random_scene, render

    src = tmp_path / "scene.png"
    scene = render(random_scene(random.Random(4)), size=64)
    scene.save(src)
    app = EditorApp(toy_pipe, guidance=fitted)
    settings = [4, 9.0, 1.1, 3, MODEL_SCHEDULER, 64, None, False]
    out, meta = app.api_edit(str(src), "remove the circle", *settings, "paste", "auto")
    assert (float(meta["ip2p:text_guidance_scale"]), float(meta["ip2p:image_guidance_scale"])) == GRID[0]
    raw = toy_pipe(scene, "remove the circle", seed=3, text_guidance_scale=3.0, image_guidance_scale=2.0)
    expected = paste_changed(scene, raw.images[0])[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(expected))
    with pytest.raises(gr.Error, match="guidance must be"):
        app.api_edit(str(src), "remove the circle", *settings, "plain", "sometimes")
