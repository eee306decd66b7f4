"""Load, convert and save the components of an editing model (paper section 3.2).

An InstructPix2Pix model is a Stable Diffusion model whose UNet takes 8 input channels: the noisy latent (4) and
the latent of the image to edit (4). Everything else (VAE, CLIP text encoder, tokenizer, scheduler) is unchanged,
so we keep diffusers' formats and loaders and add only what the method needs.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    SchedulerMixin,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLInstructPix2PixPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ip2p.edit_config import DEFAULT_MODEL  # noqa: F401 (re-exported: the hub id loaded by default)
from ip2p.fileio import atomic_dir
from ip2p.registry import MODELS, NamedModel

# What editing never uses: diffusers' safety checker and the feature extractor that feeds it.
_NO_SAFETY_CHECKER = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass
class EditComponents:
    """The parts of an editing model, as diffusers objects. ``name`` records where they came from."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin
    name: str = "unnamed"
    info: dict[str, Any] = field(default_factory=dict)
    # SDXL's second text encoder and tokenizer (None for SD 1.x/2.x); SDXL settings beside them in ``info``:
    # "force_zeros_for_empty_prompt" (zeros, not the encoded "", as the null text), "is_cosxl_edit".
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def is_sdxl(self) -> bool:
        """An SDXL model: two text encoders, and a UNet conditioned on pooled text and size ("text_time")."""
        return self.text_encoder_2 is not None or self.unet.config.addition_embed_type == "text_time"

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor times the UNet's total downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)


def pipeline_kwargs(pipe_cls: type[DiffusionPipeline]) -> dict[str, Any]:
    """The keyword arguments that turn the safety checker off, those of them that ``pipe_cls`` takes.

    For a constructor, ``from_pretrained`` or ``from_single_file``. ``DiffusionPipeline`` itself, whose
    ``from_pretrained`` picks the class from ``model_index.json``, gets all of them.

    Example:
        >>> pipeline_kwargs(StableDiffusionPipeline)
        {'safety_checker': None, 'feature_extractor': None, 'requires_safety_checker': False}
    """
    if pipe_cls is DiffusionPipeline:
        return dict(_NO_SAFETY_CHECKER)
    params = inspect.signature(pipe_cls.__init__).parameters
    return {name: value for name, value in _NO_SAFETY_CHECKER.items() if name in params}


def build_pipeline(
    pipe_cls: type[DiffusionPipeline], components: EditComponents, scheduler: SchedulerMixin | None = None
) -> DiffusionPipeline:
    """A diffusers pipeline of class ``pipe_cls`` over ``components`` (shared, not copied), safety checker off.

    Args:
        pipe_cls: a Stable Diffusion family pipeline (text-to-image, img2img, InstructPix2Pix, ...).
        components: its VAE, text encoder, tokenizer and UNet.
        scheduler: instead of ``components.scheduler``.

    Example:
        >>> pipe = build_pipeline(StableDiffusionImg2ImgPipeline, load_pipeline_components("tiny", edit=False))
    """
    sdxl = {}
    if components.is_sdxl:
        sdxl = dict(
            text_encoder_2=components.text_encoder_2,
            tokenizer_2=components.tokenizer_2,
            force_zeros_for_empty_prompt=components.info.get("force_zeros_for_empty_prompt", True),
            add_watermarker=False,  # the invisible watermark would change the pixels
            is_cosxl_edit=components.info.get("is_cosxl_edit", False),
        )
        params = inspect.signature(pipe_cls.__init__).parameters
        if "text_encoder_2" not in params:
            raise ValueError(f"{pipe_cls.__name__} is not an SDXL pipeline; these are SDXL components")
        sdxl = {name: value for name, value in sdxl.items() if name in params}
    return pipe_cls(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler if scheduler is None else scheduler,
        **sdxl,
        **pipeline_kwargs(pipe_cls),
    )


CONV_IN_INITS = ("zeros", "copy")  # how to_edit_unet starts the image channels


def to_edit_unet(
    unet: UNet2DConditionModel, extra_channels: int = 4, init: str = "zeros", image_scale: float = 1.0
) -> UNet2DConditionModel:
    """Turn a text-to-image UNet into an editing UNet, in place (paper section 3.2).

    The input convolution gains ``extra_channels`` input channels for the image condition. With ``init="zeros"``
    (the paper's) their weights are zero and the original weights and bias are kept, so at initialisation the
    output equals the text-to-image model's for any value of the extra channels (the original repository does the
    same; diffusers' training script re-initialises the bias, which changes the model).

    With ``init="copy"`` the latent channels' weights are duplicated onto the extra channels and both halves are
    halved, as Marigold (Ke et al., CVPR 2024) initialises its image-conditioned UNet: at initialisation the model
    sees the mean of the noisy latent and of the image condition times ``image_scale`` (pass the VAE's scaling
    factor, since the condition is the unscaled latent), so the image enters the base model's own features from
    the first step instead of being learnt from zero.

    Example:
        >>> unet = to_edit_unet(UNet2DConditionModel.from_pretrained("path/to/sd", subfolder="unet"))
        >>> unet.config.in_channels
        8
    """
    if init not in CONV_IN_INITS:
        raise ValueError(f"init must be {' or '.join(CONV_IN_INITS)}, got {init!r}")
    old = unet.conv_in
    if init == "copy" and extra_channels != old.in_channels:
        raise ValueError(f"init='copy' needs as many extra channels as latent ones ({old.in_channels})")
    new = torch.nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.bias.copy_(old.bias)
        if init == "zeros":
            new.weight[:, : old.in_channels].copy_(old.weight)  # (out, in + extra, k, k)
        else:
            new.weight[:, : old.in_channels].copy_(old.weight / 2)
            new.weight[:, old.in_channels :].copy_(old.weight * (image_scale / 2))
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra_channels)
    return unet


def check_edit_unet(unet: UNet2DConditionModel, latent_channels: int, source: str = "the model") -> None:
    """Refuse a UNet that cannot take the noisy latent and the image latent side by side."""
    expected = 2 * latent_channels
    got = unet.config.in_channels
    if got == latent_channels:
        raise ModelLoadError(
            f"{source} is a text-to-image model (its UNet takes {got} input channels); an editing model's UNet "
            f"takes {expected}. Train one from it with `ip2p train`, or pass an InstructPix2Pix model."
        )
    if got != expected:
        raise ModelLoadError(
            f"{source} has a UNet with {got} input channels; an editing model needs {expected} "
            f"({latent_channels} noisy latent + {latent_channels} image latent)"
        )


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def _from_pipeline(pipe: Any, name: str) -> EditComponents:
    info: dict[str, Any] = {}
    if getattr(pipe, "text_encoder_2", None) is not None:
        info["force_zeros_for_empty_prompt"] = bool(pipe.config.get("force_zeros_for_empty_prompt", True))
        # CosXL Edit, the SDXL editor on an EDM schedule, takes scaled image latents; diffusers keeps the flag
        # out of model_index.json, so an EDM scheduler names it.
        edm = type(pipe.scheduler).__name__.startswith("EDM")
        info["is_cosxl_edit"] = bool(getattr(pipe, "is_cosxl_edit", False)) or edm
    return EditComponents(
        unet=pipe.unet,
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        scheduler=pipe.scheduler,
        name=name,
        info=info,
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
    )


SDXL_EDIT_PIPELINE = "StableDiffusionXLInstructPix2PixPipeline"  # model_index.json's _class_name


def _folder_class(folder: Path) -> str | None:
    """The pipeline class a diffusers folder names (model_index.json's ``_class_name``), if readable."""
    try:
        return json.loads((folder / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _is_sdxl_checkpoint(path: Path) -> bool:
    """An original-format SDXL checkpoint: its second text encoder sits under ``conditioner.embedders.1``
    (read from the safetensors header alone; a .ckpt is judged by its ``--config``)."""
    if path.suffix != ".safetensors":
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return any(key.startswith("conditioner.embedders.1.") for key in f.keys())
    except Exception:  # an unreadable file fails in the loader with its own message
        return False


def _hub_class(repo_id: str) -> str | None:
    """The pipeline class a hub model names (its model_index.json, from the hub or its cache); None if unknown."""
    try:
        from huggingface_hub import hf_hub_download

        return _folder_class(Path(hf_hub_download(repo_id, "model_index.json")).parent)
    except Exception:  # offline or not a diffusers model: the loader says why
        return None


def _edit_pipeline_class(
    source: Path | None, config: str | None, hub_ids: tuple[str, ...] = ()
) -> type[DiffusionPipeline]:
    """SD or SDXL InstructPix2Pix, from a folder's model_index.json, a checkpoint's keys or its config folder, or
    the model_index.json of ``hub_ids`` (the model or its config as hub ids)."""
    folders = [
        p for p in (source, Path(config).expanduser() if config else None) if p is not None and p.is_dir()
    ]
    if any(_folder_class(folder) == SDXL_EDIT_PIPELINE for folder in folders):
        return StableDiffusionXLInstructPix2PixPipeline
    if any(_hub_class(repo_id) == SDXL_EDIT_PIPELINE for repo_id in hub_ids):
        return StableDiffusionXLInstructPix2PixPipeline
    if source is not None and source.is_file() and _is_sdxl_checkpoint(source):
        return StableDiffusionXLInstructPix2PixPipeline
    return StableDiffusionInstructPix2PixPipeline


def _text_to_image_pipeline_class(
    source: Path | None, config: str | None, hub_ids: tuple[str, ...] = ()
) -> type[DiffusionPipeline]:
    """SD or SDXL text-to-image: SDXL where a folder's or hub model's model_index.json names an SDXL pipeline
    (an SDXL editor too, whose UNet the caller then refuses) or a checkpoint holds SDXL's second text encoder."""
    folders = [
        p for p in (source, Path(config).expanduser() if config else None) if p is not None and p.is_dir()
    ]
    names = [_folder_class(folder) for folder in folders] + [_hub_class(repo_id) for repo_id in hub_ids]
    if any((name or "").startswith("StableDiffusionXL") for name in names):
        return StableDiffusionXLPipeline
    if source is not None and source.is_file() and _is_sdxl_checkpoint(source):
        return StableDiffusionXLPipeline
    return StableDiffusionPipeline


def load_pipeline_components(
    source: str | os.PathLike,
    *,
    edit: bool = True,
    config: str | None = None,
    torch_dtype: torch.dtype | None = None,
) -> EditComponents:
    """Load a model's components from a diffusers folder, a hub id or a single original-format checkpoint.

    Args:
        source: a named model of ``ip2p.registry.MODELS`` (``"tiny"``: a tiny random model, for trying things
            out; ``"toy"``: the toy world's bundled model, from its plug-in), a diffusers-format folder, a
            ``.safetensors``/``.ckpt`` file as the original repository released it, or a hub id such as
            ``"timbrooks/instruct-pix2pix"``.
        edit: True for an editing model (its UNet must take 8 channels), False for a text-to-image model.
        config: for single files, a diffusers folder or hub id to take the component configs from (by default
            diffusers infers it from the checkpoint, which needs the hub or its cache).
        torch_dtype: dtype to load the weights in.

    Raises:
        ModelLoadError: with a one-line reason and the way out.
    """
    text = str(source)
    path = Path(text).expanduser()
    hub_ids = tuple(
        s for s in (text, config) if s and _looks_like_hub_id(s) and not Path(s).expanduser().exists()
    )
    pipe_cls = (
        _edit_pipeline_class(path, config, hub_ids)
        if edit
        else _text_to_image_pipeline_class(path, config, hub_ids)
    )
    kwargs: dict[str, Any] = pipeline_kwargs(pipe_cls)
    if pipe_cls in (StableDiffusionXLInstructPix2PixPipeline, StableDiffusionXLPipeline):
        kwargs["add_watermarker"] = False  # the invisible watermark would change the pixels
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype

    named = MODELS.find(text)
    if named is not None:
        comps = _load_named(text, named, edit, pipe_cls, kwargs)
    else:
        if path.is_file():
            comps = _load_single_file(path, pipe_cls, config, kwargs)
        elif path.is_dir():
            if not (path / "model_index.json").is_file():
                raise ModelLoadError(
                    f"{path} is not a diffusers model folder (no model_index.json); pass a folder saved by "
                    "save_pretrained, a .safetensors/.ckpt checkpoint, or a hub id"
                )
            try:
                comps = _from_pipeline(pipe_cls.from_pretrained(path, **kwargs), str(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelLoadError(f"could not load the model in {path}: {_first_line(exc)}") from exc
        elif _looks_like_hub_id(text):
            try:
                comps = _from_pipeline(pipe_cls.from_pretrained(text, **kwargs), text)
            except Exception as exc:  # the hub client raises many types when offline
                raise ModelLoadError(
                    f"could not load {text!r} from the model hub ({_first_line(exc)}); where the hub cannot be "
                    "reached, pass a local model with --model PATH (a diffusers folder or a checkpoint file)"
                ) from exc
        else:
            raise ModelLoadError(
                f"model {text!r} does not exist: pass a diffusers folder, a .safetensors/.ckpt file, "
                f"a hub id (owner/name) or a named model ({', '.join(MODELS.names())})"
            )
    latent_channels = comps.vae.config.latent_channels
    if edit:
        check_edit_unet(comps.unet, latent_channels, source=repr(text))
    elif comps.unet.config.in_channels != latent_channels:
        raise ModelLoadError(
            f"{text!r} has a UNet with {comps.unet.config.in_channels} input channels; a text-to-image model "
            f"takes {latent_channels}"
        )
    return comps


def _load_named(name: str, named: NamedModel, edit: bool, pipe_cls: Any, kwargs: dict[str, Any]):
    """A model of the registry: its editor or text-to-image variant, from a factory or a diffusers folder."""
    what = "editor" if edit else "base model"
    source = named.editor if edit else named.base
    if source is None:
        raise ModelLoadError(f"the model {name!r} has no {what}; pass --model PATH")
    if callable(source):
        comps = source()
        comps.name = name
        return comps
    path = Path(source)
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"the bundled {name} {what} is not installed at {path}; train it (see README) or pass --model PATH"
        )
    return _from_pipeline(pipe_cls.from_pretrained(path, **kwargs), name)


def _load_single_file(
    path: Path, pipe_cls: Any, config: str | None, kwargs: dict[str, Any]
) -> EditComponents:
    """Original-format checkpoints through diffusers' single-file loader (safetensors, or torch.load with
    weights_only=True inside diffusers: no code is ever unpickled)."""
    if path.suffix not in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        raise ModelLoadError(f"{path} is neither a diffusers folder nor a .safetensors/.ckpt checkpoint")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty")
    extra = dict(kwargs)
    if config is not None:
        extra["config"] = config
    try:
        pipe = pipe_cls.from_single_file(str(path), **extra)
    except Exception as exc:  # diffusers raises many types for unreadable or foreign checkpoints
        hint = (
            "" if config else "; offline, pass config= (--config) naming a diffusers folder with its configs"
        )
        raise ModelLoadError(f"could not load the checkpoint {path}: {_first_line(exc)}{hint}") from exc
    # diffusers leaves a weight the checkpoint lacks on the meta device (no data) instead of failing.
    missing = [
        f"{name}.{key}"
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
        if getattr(pipe, name, None) is not None
        for key, tensor in [*getattr(pipe, name).named_parameters(), *getattr(pipe, name).named_buffers()]
        if tensor.is_meta
    ]
    if missing:
        raise ModelLoadError(
            f"the checkpoint {path} lacks {len(missing)} weight(s) of the model, e.g. {missing[0]}: "
            "it is incomplete or not an InstructPix2Pix/Stable Diffusion checkpoint"
        )
    return _from_pipeline(pipe, str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def save_edit_model(components: EditComponents, folder: str | os.PathLike) -> Path:
    """Save in diffusers format, readable by ``StableDiffusionInstructPix2PixPipeline.from_pretrained``.

    The folder is written under a temporary name and renamed, so an interrupted save leaves nothing half-written.
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        pipe_cls = (
            StableDiffusionXLInstructPix2PixPipeline
            if components.is_sdxl
            else StableDiffusionInstructPix2PixPipeline
        )
        build_pipeline(pipe_cls, components).save_pretrained(tmp, safe_serialization=True)
    return folder
