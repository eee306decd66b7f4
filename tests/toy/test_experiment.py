"""``ip2p toy experiment``: a recipe through every stage, resumed, shared between experiments, compared."""

import json

import pytest

from ip2p.toy.experiment import (
    DEFAULT_RECIPE,
    Experiment,
    ExperimentError,
    parse_settings,
    resolve_recipe,
)

TINY = [
    "text.captions=toy:24",
    "pairs.num_candidates=2",
    "train.train_batch_size=4",
    "train.checkpointing_steps=2",
    "eval.test_set=toy-brief:8",
    "eval.strengths=0.6",
]


def test_settings_are_typed_by_their_config_fields():
    parsed = parse_settings(
        [
            "train.max_train_steps=500",
            "train.use_ema=false",
            "eval.strengths=0.3,0.5",
            "pairs.preset=toy",
            "judge.oracle_filter=yes",
            "eval.model=toy",
        ]
    )
    assert parsed == {
        "train": {"max_train_steps": 500, "use_ema": False},
        "eval": {"strengths": [0.3, 0.5], "model": "toy"},
        "pairs": {"preset": "toy"},
        "judge": {"oracle_filter": True},
    }
    assert parse_settings(["train.max-train-steps=7"]) == {"train": {"max_train_steps": 7}}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.max_train_steps", "STAGE.FIELD=VALUE"),
        ("training.steps=3", "unknown stage 'training'"),
        ("train.bogus=1", "train has no setting 'bogus'"),
        ("train.max_train_steps=many", "expected an integer"),
        ("train.use_ema=perhaps", "expected true or false"),
        ("judge.threshold=0.5", "judge has no setting 'threshold'"),
    ],
)
def test_bad_settings_are_named(setting, message):
    with pytest.raises(ExperimentError, match=message):
        parse_settings([setting])


def test_recipe_layers_default_then_file_then_settings(tmp_path):
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps({"train": {"max_train_steps": 100, "learning_rate": 5e-4}}))
    recipe = resolve_recipe(str(recipe_file), ["train.max_train_steps=200"])
    assert recipe["train"]["max_train_steps"] == 200 and recipe["train"]["learning_rate"] == 5e-4
    assert recipe["pairs"] == DEFAULT_RECIPE["pairs"]
    assert DEFAULT_RECIPE["train"]["max_train_steps"] == 850  # the default is not changed by a recipe
    recipe_file.write_text(json.dumps({"train": {"nonsense": 1}}))
    with pytest.raises(ExperimentError, match="no setting 'nonsense'"):
        resolve_recipe(str(recipe_file))
    recipe_file.write_text("[1, 2]")
    with pytest.raises(ExperimentError, match="a recipe is a JSON object"):
        resolve_recipe(str(recipe_file))


def test_stage_folders_are_shared_only_while_the_upstream_recipe_is_the_same(tmp_path):
    a = Experiment(tmp_path, "a", resolve_recipe(None, ["train.max_train_steps=3"]))
    b = Experiment(tmp_path, "b", resolve_recipe(None, ["train.max_train_steps=6"]))
    c = Experiment(tmp_path, "c", resolve_recipe(None, ["pairs.num_candidates=4", "train.max_train_steps=3"]))
    for stage in ("text", "pairs", "judge"):
        assert a.stage_dir(stage) == b.stage_dir(stage)
    assert a.stage_dir("train") != b.stage_dir("train") and a.stage_dir("eval") != b.stage_dir("eval")
    assert a.stage_dir("text") == c.stage_dir("text") and a.stage_dir("pairs") != c.stage_dir("pairs")
    assert a.stage_dir("train") != c.stage_dir("train")  # downstream of other pairs


def test_sdedit_is_shared_by_every_experiment_with_the_same_test_and_strengths(tmp_path):
    def stage(name, *settings):
        return Experiment(tmp_path, name, resolve_recipe(None, list(settings))).stage_dir("sdedit")

    default = stage("a")
    # SDEdit runs on the base: the data, the training and the editor's own settings do not change it
    assert stage("b", "pairs.num_candidates=4", "train.max_train_steps=3") == default
    assert stage("c", "eval.model=toy", "eval.text_guidance=5", "eval.image_guidance=1.5") == default
    assert stage("d", "eval.strengths=0.5") != default
    assert stage("e", "eval.test_set=toy-brief:100") != default


def test_the_oracle_filter_is_a_judge_setting_downstream_of_the_pairs(tmp_path):
    plain = Experiment(tmp_path, "plain", resolve_recipe())
    oracle = Experiment(tmp_path, "oracle", resolve_recipe(None, ["judge.oracle_filter=true"]))
    assert plain.stage_dir("pairs") == oracle.stage_dir("pairs")  # the same candidates
    assert plain.stage_dir("judge") != oracle.stage_dir("judge")
    assert plain.stage_dir("train") != oracle.stage_dir("train")
    assert plain.training_data() == plain.stage_dir("pairs") / "data"
    assert oracle.training_data() == oracle.stage_dir("judge") / "data"


def test_a_name_keeps_its_recipe(tmp_path):
    Experiment(tmp_path, "a", resolve_recipe(None, ["train.max_train_steps=3"])).check_recipe()
    with pytest.raises(ExperimentError, match=r"another recipe \(differs in train.max_train_steps\)"):
        Experiment(tmp_path, "a", resolve_recipe(None, ["train.max_train_steps=4"])).check_recipe()
    with pytest.raises(ExperimentError, match="names are letters"):
        Experiment(tmp_path, "a/b", resolve_recipe())


@pytest.mark.slow
@pytest.mark.timeout(1200)  # five tiny experiments, every stage for real
def test_an_experiment_runs_every_stage_resumes_and_compares_with_a_baseline(tmp_path):
    said = []
    first = Experiment(tmp_path, "first", resolve_recipe(None, [*TINY, "train.max_train_steps=2"]))
    report = first.run(progress=False, say=said.append)
    assert list(report["stages"]) == ["text", "pairs", "judge", "train", "eval", "sdedit"]
    assert report["stages"]["pairs"]["unet_evaluations"] > 0
    # the editor: 8 items x 4 steps (the bundled editor's settings) x 3 branches; SDEdit: 8 x 12 of 20 steps x 2
    assert report["stages"]["eval"]["unet_evaluations"] == 8 * 4 * 3
    assert report["stages"]["sdedit"]["unet_evaluations"] == 8 * 12 * 2
    assert report["editor"]["overall"]["n"] == 8
    low, high = report["editor"]["overall"]["ci95"]
    assert 0 <= low <= report["editor"]["overall"]["success"] <= high <= 1
    assert report["data"]["overall"]["n"] == report["stages"]["judge"]["pairs"]
    text = (tmp_path / "first" / "report.md").read_text()
    assert "## Editor success" in text and "## Cost" in text and "| eval |" in text

    said.clear()  # a rerun finds every stage done
    first.run(progress=False, say=said.append)
    assert all(": done in" in line for line in said)

    said.clear()  # a second recipe that changes only training shares stages 1 and 2
    second = Experiment(tmp_path, "second", resolve_recipe(None, [*TINY, "train.max_train_steps=4"]))
    report = second.run(baseline=tmp_path / "first", progress=False, say=said.append)
    # text, pairs, judge and SDEdit's run on the base
    assert sum("shared with an earlier experiment" in line for line in said) == 4
    assert [s for s, e in report["stages"].items() if e["shared"]] == ["text", "pairs", "judge", "sdedit"]
    assert report["baseline"]["n"] == 8
    assert report["baseline"]["name"] == "first"
    text = (tmp_path / "second" / "report.md").read_text()
    assert "## Against the baseline" in text and "McNemar" in text

    with pytest.raises(ExperimentError, match="not an experiment that has run"):
        second.run(baseline=tmp_path / "nothing", progress=False)

    # the oracle as the filter: the same pairs, training on the faithful ones only
    oracle = Experiment(
        tmp_path, "oracle", resolve_recipe(None, [*TINY, "train.max_train_steps=2", "judge.oracle_filter=1"])
    )
    report = oracle.run(stages=["text", "pairs", "judge", "train"], progress=False, say=said.append)
    kept = report["stages"]["judge"]["kept"]
    assert 0 < kept <= round(report["data"]["overall"]["faithful"] * report["data"]["overall"]["n"])
    from ip2p.datasets import open_edit_dataset

    assert len(open_edit_dataset(str(oracle.training_data()))) == kept

    # a reference editor made elsewhere (the bundled one), judged on the same edits
    bundled = Experiment(tmp_path, "bundled", resolve_recipe(None, [*TINY, "eval.model=toy"]))
    report = bundled.run(stages=["eval"], baseline=tmp_path / "first", progress=False, say=said.append)
    assert report["editor"]["overall"]["n"] == 8 and report["baseline"]["n"] == 8


def test_a_stopped_experiment_says_how_to_resume_in_one_line(tmp_path, monkeypatch, capsys):
    from ip2p.cli import main
    from ip2p.harness import Interrupted

    def stopped(self, *args, **kwargs):
        raise Interrupted("training stopped at step 5 of 850 (SIGTERM), checkpoint saved: run the same command")

    monkeypatch.setattr(Experiment, "run", stopped)
    assert main(["toy", "experiment", "x", "--root", str(tmp_path), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run the same command" in err
