"""The paper's central comparison on a small set: the bundled editor against SDEdit with the bundled base.

With brief captions (``toy-brief``: no sizes or positions), SDEdit, which regenerates from the output caption,
must guess the layout the caption leaves unsaid, as it must guess what a real caption leaves unsaid; the
editor reads the layout from the input. Measured on the 300 held-out edits by ``scripts/toy_brief.sh``
(docs/results.md, brief captions): the editor at image guidance 3 gets 77.7% of edits right and keeps the rest
in 83.7% (success 68.7%), SDEdit at strength 0.3 52.0% and 73.3% (41.0%), at 0.9 60.0% and 6.0%. Here the
first 24 edits (75% and 83% against 50% and 71% at 0.3), one editor setting and three strengths, with the same
code, and the exact edits as reference points (on the 300: they beat SDEdit on both CLIP axes at 0.5, 0.7 and
0.9, not at 0.3).
"""

from __future__ import annotations

import pytest

from ip2p.toy.plugin import toy_model_path

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (toy_model_path("editor") / "model_index.json").is_file()
        or not (toy_model_path("base") / "model_index.json").is_file(),
        reason="the toy editor and base are not bundled in this checkout",
    ),
]


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    from ip2p.evaluate import (
        EvalConfig,
        editor_method,
        evaluate,
        load_test_set,
        reference_method,
        sdedit_method,
    )
    from ip2p.models import load_pipeline_components
    from ip2p.pipeline import EditConfig, EditPipeline
    from ip2p.toy.plugin import TOY_MODEL

    items = load_test_set("toy-brief:24")
    editor = EditPipeline.from_pretrained(TOY_MODEL, device="cpu")
    config = EvalConfig(
        output=str(tmp_path_factory.mktemp("brief")),
        test_set="toy-brief:24",
        resolution=64,
        batch_size=24,
        clip="toy",
        examples=0,
        progress=False,
        device="cpu",
    )
    methods = [
        editor_method(
            editor,
            EditConfig(num_inference_steps=20, resolution=64),
            [{"text_guidance_scale": 3.0, "image_guidance_scale": 3.0}],
        ),
        sdedit_method(
            load_pipeline_components(TOY_MODEL, edit=False), [0.3, 0.6, 0.9], steps=20, device="cpu"
        ),
        reference_method("target"),
        reference_method("target-vae", editor.components.vae),
    ]
    return evaluate(config, methods, items=items)["summary"]


def test_editor_beats_sdedit_on_the_oracles_plane(summary):
    """Every SDEdit strength gets fewer edits right or keeps less of the rest than the editor, and its best
    success is well below the editor's."""
    from ip2p.evaluate import curve_margin

    oracle = curve_margin(summary, "ip2p", "sdedit", plane="oracle")
    assert oracle["points"] == 3 and oracle["dominated"] == 3, summary
    assert oracle["best_oracle_success/ip2p"] >= oracle["best_oracle_success/sdedit"] + 0.1, summary


def test_sdedit_trades_the_rest_for_the_edit(summary):
    """The paper's trade-off for SDEdit: the stronger the noise, the less of the input it keeps."""
    kept = [r["oracle_preserved"] for r in summary if r["method"] == "sdedit"]
    image = [r["clip_image"] for r in summary if r["method"] == "sdedit"]
    assert kept[0] > kept[-1] + 0.3 and image[0] > image[1] > image[2], summary


def test_the_clip_plane_credits_sdedit_for_edits_left_undone(summary):
    """At strength 0.3 SDEdit keeps more CLIP image similarity than the exact edits do (it leaves additions and
    removals undone), so not even they beat it on both CLIP axes; on the oracle's plane they beat every strength.
    The editor beats on the CLIP plane the strongest strength, as the exact edits through the autoencoder do."""
    from ip2p.evaluate import curve_margin

    sdedit = [r for r in summary if r["method"] == "sdedit"]
    target = next(r for r in summary if r["method"] == "target")
    assert target["clip_image"] < sdedit[0]["clip_image"], summary
    assert curve_margin(summary, "target", "sdedit", plane="oracle")["dominated"] == 3
    exact_latent = curve_margin(summary, "target-vae", "sdedit")["dominated"]
    assert 1 <= exact_latent < 3 and curve_margin(summary, "ip2p", "sdedit")["dominated"] >= 1, summary
