"""A model's recommended edit settings: ``edit_settings.json`` beside its ``model_index.json``, without torch.

A model folder may carry the settings it edits best with (resolution, steps, guidance scales, scheduler, ...), as
``EditConfig`` field names::

    {"resolution": 64, "num_inference_steps": 20, "text_guidance_scale": 3.0, "image_guidance_scale": 2.0,
     "scheduler": "euler_ancestral"}

Precedence, lowest first: the paper's defaults (``EditConfig()``), the model's file, values given explicitly
(flags, keyword arguments): :func:`merge_settings`. ``EditPipeline.from_pretrained`` reads the file.

Example::

    settings = read_edit_settings("runs/editor/model")       # {} where the folder has no file
    config = merge_settings(settings, {"num_inference_steps": 50})
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ip2p.edit_config import TINY_MODEL, EditConfig

SETTINGS_FILE = "edit_settings.json"
# Fields a model may recommend: how it samples. Not per-call choices such as num_images or restore_size.
SETTING_KEYS = (
    "num_inference_steps",
    "text_guidance_scale",
    "image_guidance_scale",
    "scheduler",
    "resolution",
    "resize_mode",
    "guidance_rescale",
    "eta",
    "negative_prompt",
    "mask_threshold",
)
_TYPES: dict[str, tuple[type, ...]] = {
    "num_inference_steps": (int,),
    "resolution": (int,),
    "text_guidance_scale": (int, float),
    "image_guidance_scale": (int, float),
    "guidance_rescale": (int, float),
    "eta": (int, float),
    "scheduler": (str, type(None)),
    "resize_mode": (str,),
    "negative_prompt": (str, type(None)),
    "mask_threshold": (int, float),
}
# The tiny random model is for trying the code paths: small and quick, like the toy world it stands in for.
BUILTIN_SETTINGS: dict[str, dict[str, Any]] = {TINY_MODEL: {"num_inference_steps": 20, "resolution": 64}}


class SettingsError(ValueError):
    """An ``edit_settings.json`` that cannot be used; the message names the file."""


def validate_settings(settings: dict[str, Any], source: str = SETTINGS_FILE) -> dict[str, Any]:
    """Check keys, types and values of ``settings``; return them. Raises :class:`SettingsError` naming ``source``."""
    if not isinstance(settings, dict):
        raise SettingsError(f"{source}: expected a JSON object of settings, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise SettingsError(
            f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(SETTING_KEYS)}"
        )
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, _TYPES[key]):
            raise SettingsError(f"{source}: {key} = {value!r} has the wrong type")
    try:
        EditConfig(**settings).validate()
    except ValueError as exc:
        raise SettingsError(f"{source}: {exc}") from None
    return dict(settings)


def model_folder(source: str | os.PathLike) -> Path | None:
    """The folder of an editing model named as ``EditPipeline.from_pretrained`` takes it, where it has one.

    Resolved in the loader's order (``models.load_pipeline_components``): a registered name first, even where a
    folder of that name lies in the working directory, then a path."""
    from ip2p.registry import MODELS  # names come from plug-ins (the toy world's "toy")

    text = str(source)
    named = MODELS.find(text) if text else None
    if named is not None:
        return Path(named.editor) if isinstance(named.editor, str | os.PathLike) else None
    path = Path(text).expanduser()
    return path if path.is_dir() else None


def read_edit_settings(source: str | os.PathLike) -> dict[str, Any]:
    """The settings a model recommends: its folder's ``edit_settings.json``, a built-in model's own, or ``{}``."""
    if str(source) in BUILTIN_SETTINGS:
        return dict(BUILTIN_SETTINGS[str(source)])
    folder = model_folder(source)
    path = folder / SETTINGS_FILE if folder is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{path}: not readable JSON ({exc})") from None
    return validate_settings(data, str(path))


def write_edit_settings(folder: str | os.PathLike, settings: dict[str, Any] | EditConfig) -> Path:
    """Validate and write ``settings`` (a dict, or an ``EditConfig`` whose sampling fields are taken) to
    ``folder/edit_settings.json``, atomically."""
    if isinstance(settings, EditConfig):
        settings = {k: v for k, v in asdict(settings).items() if k in SETTING_KEYS}
    from ip2p.fileio import write_json_atomic

    path = Path(folder) / SETTINGS_FILE
    return write_json_atomic(path, validate_settings(settings, str(path)), sort_keys=True)


def merge_settings(settings: dict[str, Any], overrides: dict[str, Any] | None = None) -> EditConfig:
    """Paper defaults < ``settings`` (the model's) < ``overrides`` (explicit; ``None`` values mean unset)."""
    known = {f.name for f in fields(EditConfig)}
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(explicit) - known)
    if unknown:
        raise TypeError(f"unknown edit setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return EditConfig(**{**settings, **explicit})
