"""Loading a single original-format checkpoint (.safetensors / .ckpt), as timothybrooks/instruct-pix2pix released it.

A small model with SD's block structure is built from configs, saved as a diffusers folder, and converted to the
original CompVis/LDM key layout (``tests/ldm_convert.py``). Loading the file must give the same weights and the same
edits as loading the folder, bad files must raise ``ModelLoadError``, and a ``.ckpt`` must never unpickle code.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from ldm_convert import CLIP_PREFIX, UNET_PREFIX, to_ldm_checkpoint
from PIL import Image
from safetensors.torch import save_file

from ip2p.models import EditComponents, ModelLoadError, load_pipeline_components, save_edit_model
from ip2p.pipeline import EditPipeline
from ip2p.tiny import tiny_scheduler, tiny_text_encoder
from ip2p.tokenization import build_clip_tokenizer


def sd_like_components(seed: int = 0) -> EditComponents:
    """SD 1.x's block structure with tiny channel counts: 4 UNet levels (cross-attention on the first 3), 2 layers
    per block, 8 input channels; a 4-level VAE (factor 8) with SD's doubling channels; a small CLIP text tower."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    tokenizer = build_clip_tokenizer(model_max_length=77)
    text_encoder = tiny_text_encoder(tokenizer, hidden_size=32, seed=seed + 2)
    return EditComponents(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=tiny_scheduler(),
        name="sd-like",
    )


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The model, its diffusers folder, a configs-only copy of it, and the same weights as .safetensors and .ckpt."""
    root = tmp_path_factory.mktemp("single-file")
    components = sd_like_components()
    folder = save_edit_model(components, root / "folder")
    configs_only = root / "configs-only"
    shutil.copytree(folder, configs_only, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    checkpoint = to_ldm_checkpoint(components.unet, components.vae, components.text_encoder)
    save_file(checkpoint, root / "ip2p.safetensors")
    # As a Lightning checkpoint: the weights under "state_dict", plus plain numbers (weights_only accepts them).
    torch.save({"state_dict": checkpoint, "global_step": 22000}, root / "ip2p.ckpt")
    return dict(
        components=components, folder=folder, configs_only=configs_only, checkpoint=checkpoint, root=root
    )


def _image(size=64, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_checkpoint_has_the_original_layout(original):
    keys = original["checkpoint"]
    assert UNET_PREFIX + "input_blocks.0.0.weight" in keys
    assert keys[UNET_PREFIX + "input_blocks.0.0.weight"].shape[1] == 8  # an editing model
    assert UNET_PREFIX + "output_blocks.11.0.skip_connection.weight" in keys  # diffusers' SD-1 marker key
    assert UNET_PREFIX + "input_blocks.3.0.op.weight" in keys
    assert UNET_PREFIX + "output_blocks.5.2.conv.weight" in keys  # upsampler after an attention
    assert UNET_PREFIX + "output_blocks.2.1.conv.weight" in keys  # upsampler of the level without attention
    assert keys["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (
        32,
        32,
        1,
        1,
    )  # 1x1 conv, not linear
    assert "first_stage_model.decoder.up.3.block.0.conv1.weight" in keys
    assert CLIP_PREFIX + "text_model.embeddings.position_embedding.weight" in keys
    assert all(
        k.startswith((UNET_PREFIX, "first_stage_model.", CLIP_PREFIX, "betas", "alphas")) for k in keys
    )


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
@pytest.mark.parametrize("config", ["folder", "configs_only"])
def test_single_file_loads_the_same_weights(original, suffix, config):
    """The configs-only folder proves the weights come from the file, not from the config folder."""
    loaded = load_pipeline_components(
        original["root"] / f"ip2p{suffix}", edit=True, config=str(original[config])
    )
    ref = original["components"]
    for name in ("unet", "vae", "text_encoder"):
        expected, got = getattr(ref, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(got) == set(expected), name
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"{name}.{key}"
    assert loaded.unet.config.in_channels == 8
    assert loaded.vae.config.scaling_factor == ref.vae.config.scaling_factor
    assert type(loaded.scheduler) is type(ref.scheduler)
    assert loaded.tokenizer("make it blue").input_ids == ref.tokenizer("make it blue").input_ids


_EDIT = dict(seed=3, num_inference_steps=3, resolution=64)


@pytest.fixture(scope="module")
def folder_edit(original):
    pipe = EditPipeline.from_pretrained(str(original["folder"]), device="cpu", dtype="fp32")
    return pipe(_image(), "make it blue", **_EDIT)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_edit_from_single_file_equals_edit_from_folder(original, folder_edit, suffix):
    from_file = EditPipeline.from_pretrained(
        str(original["root"] / f"ip2p{suffix}"),
        device="cpu",
        dtype="fp32",
        config=str(original["configs_only"]),
    )
    a = folder_edit
    b = from_file(_image(), "make it blue", **_EDIT)
    assert a.latents.shape == (1, 4, 8, 8)
    # The weights are bitwise equal (test above) but sit at other memory alignments (safetensors mmap offsets), so
    # oneDNN may sum in another order: equal to float rounding. A wrong scheduler, scaling factor or tokenizer
    # would differ by orders of magnitude more.
    torch.testing.assert_close(a.latents, b.latents, rtol=1e-4, atol=1e-4)
    pixels_a, pixels_b = (np.asarray(r.images[0], dtype=np.int16) for r in (a, b))
    assert np.abs(pixels_a - pixels_b).max() <= 1


def _assert_one_line_error(path, config):
    with pytest.raises(ModelLoadError) as err:
        load_pipeline_components(path, edit=True, config=str(config))
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    assert str(path) in message
    return message


@pytest.mark.parametrize("name", ["garbage.ckpt", "garbage.safetensors", "garbage.pt"])
def test_garbage_checkpoint_raises_model_load_error(original, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _assert_one_line_error(path, original["configs_only"])


@pytest.mark.parametrize("name", ["empty.ckpt", "empty.safetensors"])
def test_empty_checkpoint_raises_model_load_error(original, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    assert "empty" in _assert_one_line_error(path, original["configs_only"])


def test_text_file_raises_model_load_error(original, tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("not a model\n")
    _assert_one_line_error(path, original["configs_only"])


def test_incomplete_checkpoint_raises_model_load_error(original, tmp_path):
    """A missing weight must not load as an empty (meta) tensor that fails later, far from the cause."""
    for dropped in (
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        UNET_PREFIX + "out.2.weight",
    ):
        path = tmp_path / "incomplete.safetensors"
        save_file({k: v for k, v in original["checkpoint"].items() if k != dropped}, path)
        _assert_one_line_error(path, original["configs_only"])


def test_text_to_image_checkpoint_is_refused_as_an_editor(original, tmp_path):
    checkpoint = dict(original["checkpoint"])
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    checkpoint[key] = checkpoint[key][:, :4].contiguous()  # a 4-channel (text-to-image) UNet
    path = tmp_path / "sd.safetensors"
    save_file(checkpoint, path)
    _assert_one_line_error(path, original["configs_only"])


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if the loader runs pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_ckpt_never_unpickles_code(original, tmp_path):
    marker = tmp_path / "pwned"
    payload = dict(original["checkpoint"])
    payload["model.diffusion_model.time_embed.0.weight"] = _CreatesMarker(marker)
    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": payload}, path)

    _assert_one_line_error(path, original["configs_only"])
    assert not marker.exists()

    # Control: the payload is live; an unsafe load runs it.
    unsafe = torch.load(path, weights_only=False)
    assert marker.exists()
    unsafe["state_dict"]["model.diffusion_model.time_embed.0.weight"].close()
