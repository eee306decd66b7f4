from PIL import Image

from ip2p.demo import resolve_demo_model, run_demo


def test_demo_writes_before_after_and_says_which_model(tmp_path):
    lines = run_demo(tmp_path, model="tiny", seed=3, steps=2)
    for name in ("input.png", "edited.png", "before_after.png"):
        assert Image.open(tmp_path / name).size[0] > 0
    assert any(line.startswith("instruction:") for line in lines)
    assert any("model:       tiny" == line for line in lines)
    assert Image.open(tmp_path / "edited.png").text["ip2p:steps"] == "2"


def test_auto_model_falls_back_to_the_tiny_model_with_a_plain_note(monkeypatch, tmp_path):
    import ip2p.demo

    monkeypatch.setattr(ip2p.demo, "model_folder", lambda name: tmp_path / "missing")
    name, note = resolve_demo_model("auto")
    assert name == "tiny" and "RANDOMLY INITIALISED" in note
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "model_index.json").write_text("{}")
    assert resolve_demo_model("auto") == ("toy", None)


def test_the_demo_edits_at_the_models_own_settings(tmp_path):
    lines = run_demo(tmp_path, model="tiny", seed=3)  # the tiny model's settings: 20 steps at 64 px
    edited = Image.open(tmp_path / "edited.png")
    assert edited.text["ip2p:steps"] == "20" and edited.text["ip2p:resolution"] == "64"
    assert any("20 steps, text guidance 7.5, image guidance 1.5" in line for line in lines)
