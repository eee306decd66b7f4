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
