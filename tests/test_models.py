import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline

from ip2p.models import ModelLoadError, load_pipeline_components, save_edit_model, to_edit_unet
from ip2p.pipeline import EditPipeline
from ip2p.tiny import tiny_unet


def test_to_edit_unet_keeps_the_output_for_any_extra_channels():
    unet = tiny_unet(in_channels=4, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=text).sample
        bias = unet.conv_in.bias.clone()
        weight = unet.conv_in.weight.clone()
        to_edit_unet(unet)
        extra = torch.randn(2, 4, 16, 16, generator=g) * 10
        after = unet(torch.cat([x, extra], dim=1), t, encoder_hidden_states=text).sample
    assert unet.config.in_channels == 8 and unet.conv_in.in_channels == 8
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(unet.conv_in.bias, bias)
    torch.testing.assert_close(unet.conv_in.weight[:, :4], weight)
    assert unet.conv_in.weight[:, 4:].abs().sum() == 0


def test_to_edit_unet_copy_init_sees_the_mean_of_latent_and_scaled_image():
    unet = tiny_unet(in_channels=4, seed=1).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    image = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10, 999])
    with torch.no_grad():
        expected = unet((x + 0.25 * image) / 2, t, encoder_hidden_states=text).sample
        to_edit_unet(unet, init="copy", image_scale=0.25)
        got = unet(torch.cat([x, image], dim=1), t, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="zeros or copy"):
        to_edit_unet(tiny_unet(in_channels=4), init="ones")


def test_saved_model_loads_in_diffusers_and_here(make_components, tmp_path):
    components = make_components()
    folder = save_edit_model(components, tmp_path / "model")
    reference = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    assert reference.unet.config.in_channels == 8
    loaded = load_pipeline_components(folder)
    for a, b in zip(components.unet.parameters(), loaded.unet.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    from PIL import Image

    ours = EditPipeline(components, device="cpu")(
        Image.fromarray(image), "x", seed=1, num_inference_steps=2, resolution=32
    )
    again = EditPipeline(loaded, device="cpu")(
        Image.fromarray(image), "x", seed=1, num_inference_steps=2, resolution=32
    )
    assert np.array_equal(np.asarray(ours.images[0]), np.asarray(again.images[0]))
    assert not list(tmp_path.glob(".model.*")), "no temporary folder may remain"


def test_text_to_image_model_is_refused_with_a_clear_message(make_components, tmp_path):
    from diffusers import StableDiffusionPipeline

    c = make_components(edit=False)
    StableDiffusionPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=c.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(tmp_path / "t2i")
    with pytest.raises(ModelLoadError, match="is a text-to-image model"):
        load_pipeline_components(tmp_path / "t2i", edit=True)
    assert load_pipeline_components(tmp_path / "t2i", edit=False).unet.config.in_channels == 4


def test_missing_path_and_foreign_folder_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline_components(tmp_path / "nowhere" / "model")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        load_pipeline_components(tmp_path / "stuff")


def test_offline_hub_id_names_the_way_out():
    with pytest.raises(ModelLoadError, match="--model PATH") as info:
        load_pipeline_components("timbrooks/instruct-pix2pix")
    assert "\n" not in str(info.value)


def test_named_models_resolve_through_the_registry(tmp_path):
    """A name of ip2p.registry.MODELS is a factory or a folder, per variant; what it lacks is named in one line."""
    from ip2p.registry import MODELS, NamedModel
    from ip2p.tiny import tiny_components

    assert load_pipeline_components("tiny", edit=False).unet.config.in_channels == 4
    MODELS.register(
        "mine", NamedModel(editor=lambda: tiny_components(edit=True, seed=1), base=tmp_path / "absent")
    )
    try:
        comps = load_pipeline_components("mine")
        assert comps.name == "mine" and comps.unet.config.in_channels == 8
        with pytest.raises(
            ModelLoadError, match=f"the bundled mine base model is not installed at {tmp_path}"
        ):
            load_pipeline_components("mine", edit=False)
        with pytest.raises(ModelLoadError, match=r"a named model \(.*mine.*tiny.*\)"):
            load_pipeline_components("nothing-of-that-name")
    finally:
        MODELS.unregister("mine")
