"""A model's edit settings (edit_settings.json): validation, reading, and precedence paper < model < explicit."""

import json
from pathlib import Path

import pytest

from ip2p.edit_config import SCHEDULER_NAMES, EditConfig
from ip2p.edit_settings import (
    SETTINGS_FILE,
    SettingsError,
    merge_settings,
    read_edit_settings,
    validate_settings,
    write_edit_settings,
)


def test_merge_puts_explicit_values_over_the_models_over_the_papers():
    model = {"num_inference_steps": 20, "text_guidance_scale": 3.0, "resolution": 64}
    config = merge_settings(model, {"text_guidance_scale": 5.0, "image_guidance_scale": None})
    assert config.text_guidance_scale == 5.0  # explicit
    assert (config.num_inference_steps, config.resolution) == (20, 64)  # the model's
    assert (
        config.image_guidance_scale == EditConfig().image_guidance_scale == 1.5
    )  # the paper's (None is unset)
    assert merge_settings({}) == EditConfig()
    with pytest.raises(TypeError, match="unknown edit setting"):
        merge_settings({}, {"stepz": 3})


def test_write_then_read_round_trips(tmp_path):
    settings = {"num_inference_steps": 20, "scheduler": "ddim", "guidance_rescale": 0.5, "resize_mode": "pad"}
    path = write_edit_settings(tmp_path, settings)
    assert path == tmp_path / SETTINGS_FILE
    assert read_edit_settings(tmp_path) == settings
    write_edit_settings(tmp_path, EditConfig(num_inference_steps=7))  # an EditConfig: its sampling fields
    assert read_edit_settings(tmp_path)["num_inference_steps"] == 7
    assert "num_images" not in json.loads(path.read_text())


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": 20}, "unknown key(s) steps"),
        ({"num_inference_steps": "20"}, "num_inference_steps = '20' has the wrong type"),
        ({"num_inference_steps": True}, "has the wrong type"),
        ({"num_inference_steps": 0}, "steps must be at least 1"),
        ({"scheduler": "fast"}, "unknown scheduler 'fast'"),
        ({"guidance_rescale": 2.0}, "guidance rescale must lie in [0, 1]"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_a_bad_file_fails_in_one_line_naming_it(tmp_path, data, message):
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(data))
    with pytest.raises(SettingsError) as info:
        read_edit_settings(tmp_path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(tmp_path / SETTINGS_FILE)) and message in text


def test_unreadable_json_and_missing_files(tmp_path):
    assert read_edit_settings(tmp_path) == {}  # no file: no settings
    assert read_edit_settings(tmp_path / "nowhere") == {}
    (tmp_path / SETTINGS_FILE).write_text("{not json")
    with pytest.raises(SettingsError, match="not readable JSON"):
        read_edit_settings(tmp_path)
    with pytest.raises(SettingsError):
        validate_settings({"resolution": 4}, "x")


def test_the_bundled_toy_editor_carries_the_toy_preset():
    from ip2p.toy.bundle import EDITOR_SETTINGS

    assert (
        read_edit_settings("toy")
        == EDITOR_SETTINGS
        == {
            "resolution": 64,
            "num_inference_steps": 4,
            "text_guidance_scale": 3.0,
            "image_guidance_scale": 2.0,
            "scheduler": "euler_ancestral",
            "mask_threshold": 0.1,
        }
    )


def test_a_name_means_the_named_model_as_the_loader_takes_it_even_beside_a_folder_of_that_name(
    tmp_path, monkeypatch
):
    """models.load_pipeline_components looks a name up before the file system: the settings follow it."""
    from ip2p.edit_settings import model_folder
    from ip2p.registry import MODELS
    from ip2p.toy.bundle import EDITOR_SETTINGS

    monkeypatch.chdir(tmp_path)
    write_edit_settings(tmp_path / "toy", {"resolution": 128})
    assert model_folder("toy") == Path(MODELS.get("toy").editor) != Path("toy").resolve()
    assert read_edit_settings("toy") == EDITOR_SETTINGS
    assert read_edit_settings("./toy") == {"resolution": 128}  # a path is a path


def test_scheduler_names_and_constants_match_the_torch_modules():
    import ip2p.edit_config as light
    from ip2p.imaging import DEFAULT_MAX_PIXELS
    from ip2p.models import DEFAULT_MODEL
    from ip2p.pairs.clip_score import DEFAULT_CLIP
    from ip2p.pairs.config import DEFAULT_CLIP as CONFIG_CLIP
    from ip2p.sampling import SCHEDULERS
    from ip2p.tiny import TINY_MODEL

    assert tuple(sorted(SCHEDULERS)) == SCHEDULER_NAMES
    assert (light.DEFAULT_MAX_PIXELS, light.DEFAULT_MODEL, light.TINY_MODEL) == (
        DEFAULT_MAX_PIXELS,
        DEFAULT_MODEL,
        TINY_MODEL,
    )
    assert CONFIG_CLIP == DEFAULT_CLIP
