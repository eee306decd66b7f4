"""Bundling trained toy models into the package: half-precision files, loaded back in float32, same behaviour."""

from __future__ import annotations

import torch

from ip2p.models import load_pipeline_components, save_edit_model
from ip2p.tiny import tiny_components
from ip2p.toy.bundle import bundle


def _size(folder):
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def test_bundle_halves_the_files_and_loads_as_float32(tmp_path, tiny_clip_dir):
    from transformers import CLIPModel

    save_edit_model(tiny_components(edit=True), tmp_path / "editor")
    out = bundle({"editor": tmp_path / "editor", "clip": tiny_clip_dir}, root=tmp_path / "weights")
    assert _size(out["editor"]) < 0.6 * _size(tmp_path / "editor")
    full = load_pipeline_components(str(tmp_path / "editor"), edit=True)
    half = load_pipeline_components(str(out["editor"]), edit=True)
    for a, b in ((full.unet, half.unet), (full.vae, half.vae), (full.text_encoder, half.text_encoder)):
        assert b.dtype == torch.float32
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.allclose(p, q, atol=1e-3, rtol=1e-3), name
    clip = CLIPModel.from_pretrained(out["clip"])
    assert clip.dtype == torch.float32 and (out["clip"] / "tokenizer_config.json").is_file()


def test_an_editor_is_bundled_with_its_edit_settings(tmp_path):
    from ip2p.cli import main
    from ip2p.edit_settings import read_edit_settings, write_edit_settings
    from ip2p.toy.bundle import EDITOR_SETTINGS

    save_edit_model(tiny_components(edit=True), tmp_path / "editor")
    out = bundle({"editor": tmp_path / "editor"}, root=tmp_path / "weights")
    assert read_edit_settings(out["editor"]) == EDITOR_SETTINGS  # none of its own: the toy preset
    write_edit_settings(tmp_path / "editor", {"num_inference_steps": 8})
    out = bundle({"editor": tmp_path / "editor"}, root=tmp_path / "weights")
    assert read_edit_settings(out["editor"]) == {"num_inference_steps": 8}  # its own, kept
    assert not (out["editor"] / "auto_guidance.json").exists()
    (tmp_path / "editor" / "auto_guidance.json").write_text('{"grid": []}')
    out = bundle({"editor": tmp_path / "editor"}, root=tmp_path / "weights")
    assert (
        out["editor"] / "auto_guidance.json"
    ).read_text() == '{"grid": []}'  # the guidance predictor travels
    assert main(["toy", "bundle"]) == 1  # nothing named: a one-line error
