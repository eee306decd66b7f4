"""ip2p.registry: names that plug-ins give, found through the ``ip2p.plugins`` entry points; metric plug-ins in
``ip2p evaluate``; the evaluation defaults a named model carries."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ip2p import registry
from ip2p.registry import METRICS, Metric, Registry, RegistryError, find_counted


def test_unknown_names_fail_in_one_line_listing_the_known_ones():
    with pytest.raises(RegistryError, match=r"^unknown model 'nope'; known: .*\btiny\b.*\btoy\b") as info:
        registry.MODELS.get("nope")
    assert "\n" not in str(info.value)
    with pytest.raises(RegistryError, match="unknown metric 'nope'; known: .*oracle"):
        METRICS.get("nope")


def test_names_are_registered_once_and_well_formed():
    things: Registry[int] = Registry("thing")
    things.register("a", 1)
    with pytest.raises(RegistryError, match="already registered"):
        things.register("a", 2)
    assert things.register("a", 3, replace=True) == 3 and things.get("a") == 3
    assert things.provide("a", 4) == 3 and things.provide("b", 5) == 5  # a plug-in never overrides a name
    for bad in ("", "a:b", " a"):
        with pytest.raises(RegistryError, match="non-empty"):
            things.register(bad, 1)
    things.unregister("a")
    assert "a" not in things and things.find("a") is None


def test_counted_names_parse_and_paths_fall_through():
    name, load, count = find_counted(registry.TEST_SETS, "toy-val:12")
    assert (name, count) == ("toy-val", 12) and callable(load)
    assert find_counted(registry.TEST_SETS, "toy")[2] is None
    assert find_counted(registry.TEST_SETS, "data/test.jsonl") is None  # not a name: a path
    for bad in ("toy:x", "toy:0", "toy:"):
        with pytest.raises(RegistryError, match="write toy or toy:N with N a positive number"):
            find_counted(registry.TEST_SETS, bad)


def test_the_toy_plugin_is_found_through_entry_points_without_being_imported():
    """In a fresh interpreter: importing the registry loads nothing; the first lookup of a missing name loads the
    plug-ins declared under ``ip2p.plugins`` (the toy world and tiny), without torch."""
    code = """
import json, sys
from importlib.metadata import entry_points
import ip2p.registry as r
before = sorted(m for m in sys.modules if m.startswith("ip2p.toy") or m == "torch")
found = r.TEST_SETS.find("toy-brief") is not None
print(json.dumps({
    "entry_points": sorted(ep.name for ep in entry_points(group=r.ENTRY_POINT_GROUP)),
    "before": before,
    "found": found,
    "models": r.MODELS.names(),
    "torch": "torch" in sys.modules,
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"toy", "tiny"} <= set(got["entry_points"])
    assert got["before"] == [] and got["found"] and {"tiny", "toy"} <= set(got["models"])
    assert not got["torch"]


def test_load_plugin_is_explicit_and_once():
    registry.load_plugin("ip2p.toy.plugin")  # already loaded through the entry point: nothing happens
    registry.load_plugin("ip2p.toy.plugin:register")
    assert registry.CLIP_MODELS.get("toy").name == "clip"
    with pytest.raises(ModuleNotFoundError):
        registry.load_plugin("ip2p_no_such_plugin")
    try:
        assert "ip2p_no_such_plugin:register" in registry.plugin_failures()
        with pytest.raises(RegistryError, match="failed to load: ip2p_no_such_plugin:register"):
            registry.MODELS.get("nope")
    finally:
        registry._loaded.pop("ip2p_no_such_plugin:register")


@pytest.fixture
def brightness():
    """A user's own ground-truth metric, registered for one test."""

    def measure(items, inputs, edited):
        return [
            {"brightness": float(np.asarray(im.convert("L")).mean() / 255)} if it.edit_type else {}
            for it, im in zip(items, edited, strict=True)
        ]

    METRICS.register(
        "brightness",
        Metric(
            measure,
            columns=("brightness",),
            by_type=("brightness",),
            plane=("brightness", "brightness", "bright x", "bright y"),
            headline="brightness",
        ),
    )
    yield
    METRICS.unregister("brightness")


def _white_items(tmp_path, n=3):
    from ip2p.evaluate import EvalItem

    return [
        EvalItem(
            id=f"i{i}",
            image=Image.new("RGB", (16, 16), (0, 0, 0)),
            instruction="make it white",
            edit_type="whiten" if i else None,  # the metric judges items with an edit type only
        )
        for i in range(n)
    ]


def test_a_registered_metric_joins_records_summary_plot_and_margins(tmp_path, brightness):
    from ip2p.evaluate import PLANES, EvalConfig, Method, curve_margin, evaluate, read_records, summary_table

    white = Method(
        "white",
        [{"strength": 1.0}],
        lambda images, items, s, seeds: [Image.new("RGB", im.size, "white") for im in images],
    )
    out = tmp_path / "run"
    config = EvalConfig(output=str(out), resolution=16, clip=None, examples=0, progress=False)
    summary = evaluate(config, [white], items=_white_items(tmp_path))["summary"]
    records = read_records(out)
    assert [r.get("brightness") for r in records] == [None, 1.0, 1.0]
    assert summary[0]["brightness"] == 1.0 and summary[0]["brightness/whiten"] == 1.0
    assert "brightness" in PLANES and "brightness" in summary_table(summary)
    assert curve_margin(summary, "white", "white", plane="brightness")["best_brightness/white"] == 1.0
    assert "brightness" in (out / "summary.csv").read_text().splitlines()[0]


def test_evaluate_measures_only_the_metrics_asked_for(tmp_path, brightness):
    from ip2p.evaluate import EvalConfig, EvaluationError, evaluate, read_records, reference_method

    items = _white_items(tmp_path)
    config = EvalConfig(output=str(tmp_path / "a"), resolution=16, clip=None, progress=False, metrics=[])
    evaluate(config, [reference_method("input")], items=items)
    assert all("brightness" not in r for r in read_records(tmp_path / "a"))
    config = EvalConfig(
        output=str(tmp_path / "b"), resolution=16, clip=None, progress=False, metrics=["nope"]
    )
    with pytest.raises(EvaluationError, match="unknown metric 'nope'; known: .*brightness"):
        evaluate(config, [reference_method("input")], items=items)


def test_a_named_model_brings_its_evaluation_defaults():
    from ip2p.evaluate.config import EvalRunConfig

    toy = EvalRunConfig(output="o", model="toy").resolved()
    assert (toy.clip, toy.base, toy.test_set, toy.sdedit_steps) == ("toy", "toy", "toy:300", 20)
    # The editor samples as its edit_settings.json says; the paper sweep's fixed text scale is the model's.
    assert (toy.steps, toy.resolution, toy.scheduler) == (4, 64, "euler_ancestral")
    assert toy.text_guidance == [3.0] and toy.image_guidance is None
    assert EvalRunConfig(output="o", model="toy", sweep="text").resolved().image_guidance == [2.0]
    mine = EvalRunConfig(
        output="o", model="toy", steps=5, test_set="toy-val:10", text_guidance=[7.5]
    ).resolved()
    assert (mine.steps, mine.sdedit_steps, mine.test_set, mine.resolution) == (5, 5, "toy-val:10", 64)
    assert mine.text_guidance == [7.5]
    # SDEdit alone reads no editor: the named model's resolution and steps stand (not the paper's 512 px, 100)
    sdedit = EvalRunConfig(output="o", model="toy", methods="sdedit").resolved()
    assert (sdedit.resolution, sdedit.steps, sdedit.sdedit_steps) == (64, 20, 20)
    other = EvalRunConfig(output="o", model="some/folder").resolved()
    assert (other.steps, other.resolution, other.base, other.test_set) == (100, 512, None, None)
    assert other.clip == "openai/clip-vit-large-patch14"


def test_the_built_in_plugins_load_without_entry_points(monkeypatch):
    """A source checkout on PYTHONPATH (or a stale editable install) lists no ``ip2p.plugins`` entry points: the
    built-in plug-ins are still found, by name, so that ``--model tiny`` and ``--model toy`` work there."""
    from importlib import metadata

    monkeypatch.setattr(metadata, "entry_points", lambda **kw: [])
    monkeypatch.setattr(registry, "_entry_points_read", False)
    monkeypatch.setattr(registry, "_loaded", {})
    for reg in (registry.MODELS, registry.TEST_SETS, registry.CLIP_MODELS):
        monkeypatch.setattr(reg, "_items", {})
    assert registry.MODELS.get("tiny") is not None and registry.MODELS.get("toy").eval_defaults
    assert registry.TEST_SETS.find("toy") is not None and registry.CLIP_MODELS.find("toy") is not None
    assert set(registry._loaded) == set(registry.BUILTIN_PLUGINS)
