import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from ip2p.pipeline import EditConfig, EditPipeline
from ip2p.sampling import SCHEDULERS, make_scheduler


def _input_image(size=32, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _reference(components, scheduler):
    return StableDiffusionInstructPix2PixPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.mark.parametrize("scheduler_name", ["euler_ancestral", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("num_images", [1, 2])
def test_equals_diffusers_pipeline(make_components, scheduler_name, num_images):
    """Same components, scheduler, seed and settings: the same latents and pixels as diffusers."""
    components = make_components()
    pipe = EditPipeline(components, device="cpu", dtype="fp32")
    image = _input_image()
    ours = pipe(
        image,
        "make it blue",
        seed=123,
        num_inference_steps=4,
        resolution=32,
        scheduler=scheduler_name,
        num_images=num_images,
        text_guidance_scale=7.5,
        image_guidance_scale=1.5,
    )

    reference = _reference(components, make_scheduler(scheduler_name, components.scheduler))
    reference.set_progress_bar_config(disable=True)
    kwargs = dict(
        prompt="make it blue",
        image=image,
        num_inference_steps=4,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        num_images_per_prompt=num_images,
    )
    latents = reference(**kwargs, generator=torch.Generator().manual_seed(123), output_type="latent").images
    pixels = reference(**kwargs, generator=torch.Generator().manual_seed(123), output_type="np").images

    torch.testing.assert_close(ours.latents, latents, rtol=1e-5, atol=1e-5)
    ours_np = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in ours.images])
    assert np.abs(ours_np - pixels).max() <= 1 / 255 + 1e-6


def test_same_seed_same_result_and_seed_is_recorded(make_components):
    pipe = EditPipeline(make_components(), device="cpu")
    a = pipe(_input_image(), "add a hat", seed=7, num_inference_steps=3, resolution=32)
    b = pipe(_input_image(), "add a hat", seed=7, num_inference_steps=3, resolution=32)
    c = pipe(_input_image(), "add a hat", seed=8, num_inference_steps=3, resolution=32)
    assert a.seed == 7
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(c.images[0]))
    assert a.metadata()["ip2p:seed"] == "7"


def test_random_seed_is_drawn_and_reproduces(make_components):
    pipe = EditPipeline(make_components(), device="cpu")
    a = pipe(_input_image(), "add a hat", num_inference_steps=2, resolution=32)
    assert isinstance(a.seed, int)
    b = pipe(_input_image(), "add a hat", seed=a.seed, num_inference_steps=2, resolution=32)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_defaults_are_the_papers():
    config = EditConfig()
    assert (config.num_inference_steps, config.text_guidance_scale, config.image_guidance_scale) == (
        100,
        7.5,
        1.5,
    )
    assert config.resolution == 512


def test_empty_instruction_returns_the_input_unchanged(make_components):
    pipe = EditPipeline(make_components(), device="cpu")
    image = _input_image()
    result = pipe(image, "   ", num_inference_steps=2, resolution=32)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(result.input_image))
    assert "empty instruction" in result.info["note"]


def test_long_instruction_is_truncated_with_a_warning(make_components):
    pipe = EditPipeline(make_components(), device="cpu")
    with pytest.warns(UserWarning, match="truncated"):
        result = pipe(_input_image(), "make it blue " * 40, seed=0, num_inference_steps=1, resolution=32)
    assert result.images[0].size == (32, 32)


def test_callback_sees_every_step(make_components):
    pipe = EditPipeline(make_components(), device="cpu")
    seen = []
    pipe(
        _input_image(),
        "x",
        seed=0,
        num_inference_steps=5,
        resolution=32,
        callback=lambda i, n, _: seen.append((i, n)),
    )
    assert seen == [(i, 5) for i in range(5)]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs(make_components, name):
    pipe = EditPipeline(make_components(), device="cpu")
    result = pipe(_input_image(), "x", seed=0, num_inference_steps=3, resolution=32, scheduler=name)
    assert np.isfinite(np.asarray(result.images[0], dtype=np.float32)).all()
    assert result.info["scheduler"] == SCHEDULERS[name][0].__name__


def test_unit_scales_use_one_branch_and_equal_the_conditional_model(make_components):
    """s_T = s_I = 1: three branches and one give the same result (to rounding)."""
    components = make_components()
    pipe = EditPipeline(components, device="cpu")
    calls = []
    handle = components.unet.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    one = pipe(
        _input_image(),
        "x",
        seed=0,
        num_inference_steps=2,
        resolution=32,
        text_guidance_scale=1.0,
        image_guidance_scale=1.0,
        scheduler="ddim",
    )
    handle.remove()
    assert calls == [1, 1]
    three = pipe(
        _input_image(),
        "x",
        seed=0,
        num_inference_steps=2,
        resolution=32,
        text_guidance_scale=1.0,
        image_guidance_scale=1.0 + 1e-12,
        scheduler="ddim",
    )
    torch.testing.assert_close(one.latents, three.latents, rtol=1e-4, atol=1e-4)


def test_bf16_on_cpu_runs(make_components):
    pipe = EditPipeline(make_components(), device="cpu", dtype="bf16")
    result = pipe(_input_image(), "x", seed=0, num_inference_steps=2, resolution=32)
    assert result.info["dtype"] == "torch.bfloat16"
    assert result.images[0].size == (32, 32)


def test_fp16_on_cpu_is_refused(make_components):
    with pytest.raises(ValueError, match="fp16"):
        EditPipeline(make_components(), device="cpu", dtype="fp16")


def test_resolution_and_restore_size(make_components):
    pipe = EditPipeline(make_components(), device="cpu")
    wide = _input_image(64).resize((60, 36))
    fit = pipe(wide, "x", seed=0, num_inference_steps=1, resolution=32)
    assert fit.images[0].size == fit.input_image.size
    assert all(side % pipe.size_multiple == 0 for side in fit.images[0].size)
    restored = pipe(
        wide, "x", seed=0, num_inference_steps=1, resolution=32, resize_mode="pad", restore_size=True
    )
    assert restored.images[0].size == (60, 36)


def test_bad_settings_name_the_value(make_components):
    pipe = EditPipeline(make_components(), device="cpu")
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        pipe(_input_image(), "x", num_inference_steps=0, resolution=32)
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        pipe(_input_image(), "x", num_inference_steps=1, resolution=32, scheduler="nope")


def test_guidance_rescale_matches_the_conditional_std(make_components, monkeypatch):
    """phi = 1 gives the guided prediction the per-sample std of the fully conditioned one; phi = 0 is the paper's
    dual guidance; a rescale outside [0, 1] is refused."""
    import ip2p.pipeline as pipeline_module
    from ip2p.guidance import dual_guidance

    components = make_components()
    pipe = EditPipeline(components, device="cpu")
    seen = {}

    def one_call(model_fn, noise, *args, **kwargs):
        outputs = []
        hook = components.unet.register_forward_hook(lambda m, i, o: outputs.append(o[0]))
        seen["guided"] = model_fn(noise, torch.tensor(500))
        hook.remove()
        seen["branches"] = outputs[0].chunk(3)
        return noise

    monkeypatch.setattr(pipeline_module, "denoise", one_call)
    for phi in (0.0, 1.0, 0.5):
        pipe(_input_image(), "x", seed=0, resolution=32, text_guidance_scale=5, guidance_rescale=phi)
        text_image, image, uncond = seen["branches"]
        plain = dual_guidance(text_image, image, uncond, 5.0, 1.5)
        if phi == 0.0:
            torch.testing.assert_close(seen["guided"], plain)
        elif phi == 1.0:
            std = lambda x: x.std(dim=(1, 2, 3))  # noqa: E731
            torch.testing.assert_close(std(seen["guided"]), std(text_image))
            assert not torch.allclose(std(plain), std(text_image))  # the guidance did change the std
        else:
            rescaled = (
                plain * text_image.std(dim=(1, 2, 3), keepdim=True) / plain.std(dim=(1, 2, 3), keepdim=True)
            )
            torch.testing.assert_close(seen["guided"], 0.5 * rescaled + 0.5 * plain)
    with pytest.raises(ValueError, match=r"guidance rescale must lie in \[0, 1\], got 1.5"):
        pipe(_input_image(), "x", resolution=32, guidance_rescale=1.5)


def test_a_call_without_a_setting_uses_the_models(make_components, tmp_path):
    """Paper defaults < the model's edit_settings.json (read by from_pretrained) < values given to the call."""
    from ip2p.edit_settings import write_edit_settings
    from ip2p.models import save_edit_model

    save_edit_model(make_components(), tmp_path / "model")
    write_edit_settings(
        tmp_path / "model", {"num_inference_steps": 3, "resolution": 32, "text_guidance_scale": 2.0}
    )
    pipe = EditPipeline.from_pretrained(str(tmp_path / "model"), device="cpu")
    assert pipe.settings == {"num_inference_steps": 3, "resolution": 32, "text_guidance_scale": 2.0}
    config = pipe.config_for(num_inference_steps=2, image_guidance_scale=None)
    assert (config.num_inference_steps, config.resolution, config.text_guidance_scale) == (2, 32, 2.0)
    assert config.image_guidance_scale == EditConfig().image_guidance_scale  # the paper's
    steps = []
    result = pipe(_input_image(48), "make it blue", seed=0, callback=lambda i, n, _: steps.append(n))
    assert len(steps) == 3 and result.images[0].size == (32, 32)  # the model's steps and resolution
    assert result.config.text_guidance_scale == 2.0
    explicit = pipe(
        _input_image(48), "make it blue", EditConfig(num_inference_steps=1, resolution=32), seed=0
    )
    assert explicit.config.text_guidance_scale == 7.5  # an explicit config is used as given


def test_bad_settings_are_refused_by_name(make_components):
    from ip2p.edit_settings import SettingsError

    with pytest.raises(SettingsError, match="unknown key"):
        EditPipeline(make_components(), device="cpu", settings={"stepz": 3})
