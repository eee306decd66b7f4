"""ip2p: InstructPix2Pix (Brooks, Holynski, Efros, CVPR 2023), end to end.

Edit an image by a written instruction::

    from ip2p import EditPipeline
    pipe = EditPipeline.from_pretrained("toy")
    result = pipe("scene.png", "make the circle green", seed=0, resolution=64)
    result.images[0].save("edited.png")
"""

__version__ = "0.1.0"

__all__ = [
    "EditComponents",
    "EditConfig",
    "EditPipeline",
    "EditResult",
    "dual_guidance",
    "load_pipeline_components",
    "save_edit_model",
    "to_edit_unet",
]


def __getattr__(name: str):
    # Lazy: `ip2p --help` and the toy world should not pay for importing torch and diffusers.
    if name in ("EditPipeline", "EditConfig", "EditResult"):
        from ip2p import pipeline

        return getattr(pipeline, name)
    if name in ("EditComponents", "load_pipeline_components", "save_edit_model", "to_edit_unet"):
        from ip2p import models

        return getattr(models, name)
    if name == "dual_guidance":
        from ip2p.guidance import dual_guidance

        return dual_guidance
    raise AttributeError(f"module 'ip2p' has no attribute {name!r}")
