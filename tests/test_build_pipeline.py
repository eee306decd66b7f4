import pytest
from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)

from ip2p.models import build_pipeline, pipeline_kwargs
from ip2p.sampling import make_scheduler
from ip2p.tiny import tiny_components

NO_SAFETY_CHECKER = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


class _WithoutSafetyChecker(DiffusionPipeline):
    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)


@pytest.mark.parametrize(
    "pipe_cls",
    [StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInstructPix2PixPipeline],
)
def test_stable_diffusion_classes_get_the_safety_checker_off(pipe_cls):
    assert pipeline_kwargs(pipe_cls) == NO_SAFETY_CHECKER


def test_kwargs_a_class_does_not_take_are_left_out():
    assert pipeline_kwargs(_WithoutSafetyChecker) == {}
    assert pipeline_kwargs(DiffusionPipeline) == NO_SAFETY_CHECKER  # from_pretrained picks the class later


@pytest.mark.parametrize("edit", [False, True])
def test_build_pipeline_shares_components(edit):
    comps = tiny_components(edit=edit)
    pipe_cls = StableDiffusionInstructPix2PixPipeline if edit else StableDiffusionImg2ImgPipeline
    pipe = build_pipeline(pipe_cls, comps)
    assert isinstance(pipe, pipe_cls)
    assert pipe.unet is comps.unet and pipe.vae is comps.vae and pipe.text_encoder is comps.text_encoder
    assert pipe.tokenizer is comps.tokenizer and pipe.scheduler is comps.scheduler
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.config.requires_safety_checker is False


def test_build_pipeline_takes_another_scheduler():
    comps = tiny_components(edit=False)
    ddim = make_scheduler("ddim", comps.scheduler)
    pipe = build_pipeline(StableDiffusionPipeline, comps, scheduler=ddim)
    assert pipe.scheduler is ddim and comps.scheduler is not ddim
