"""Copy trained toy models into the package (``ip2p/toy/weights``) as half-precision safetensors.

The package ships the toy world's models so that the demo, the web app and the tests never train: ``base`` (the
text-to-image pipeline), ``clip`` (the CLIP for filtering and evaluation), ``editor`` (the instruction editor) and
``lm`` (the language model of stage 1). Weights are stored in float16 to stay within the 40 MB budget; every loader
upcasts them to the dtype it computes in (float32 on a CPU), so only storage loses precision, and the quality bars
are measured on the bundled copies (``ip2p toy quality --model toy``).

Usage::

    ip2p toy bundle --base runs/toy/base --clip runs/toy/clip --editor runs/toy-editor/model --lm runs/toy-lm

An editor is bundled with its edit settings (``edit_settings.json``): the folder's own where it has one, else
:data:`EDITOR_SETTINGS`, so that ``--model toy`` edits at them unless told otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ip2p.fileio import atomic_dir
from ip2p.toy.plugin import toy_model_path

KINDS = ("base", "clip", "editor", "lm")
# The toy editor's settings: 64 px (the toy world's images), the guidance and the step count chosen on the toy
# validation split (toy-val:200 at text 3 and image 2: 2 steps 60.0%, 4 steps 67.0%, 6 66.0%, 8 67.0%, 12 67.5%,
# 20 64.0%; the fewest steps within a point of the best; docs/results.md), its own sampler, and the automatic
# mask's threshold chosen on toy-val:200 (0.1: success 67.0% as without a mask; 0.5, the default: background
# changes lost).
EDITOR_SETTINGS = {
    "resolution": 64,
    "num_inference_steps": 4,
    "text_guidance_scale": 3.0,
    "image_guidance_scale": 2.0,
    "scheduler": "euler_ancestral",
    "mask_threshold": 0.1,
}
# files an editor folder carries beside its weights, copied into the bundle where the source has them
EDITOR_EXTRAS = ("auto_guidance.json",)


def _load_as_float32(folder: Path) -> None:
    """transformers loads with ``dtype="auto"``, which follows the config's dtype: record float32 there, so the
    half-precision weights are upcast on load like diffusers' models are."""
    for config in folder.rglob("config.json"):
        data = json.loads(config.read_text())
        if "dtype" in data or "torch_dtype" in data or "architectures" in data:
            data.pop("torch_dtype", None)
            data["dtype"] = "float32"
            for sub in ("text_config", "vision_config"):
                if isinstance(data.get(sub), dict):
                    data[sub].pop("torch_dtype", None)
                    data[sub]["dtype"] = "float32"
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_half(kind: str, source: Path, dest: Path) -> None:
    _save_half_weights(kind, source, dest)
    _load_as_float32(dest)
    if kind == "editor":
        from ip2p.edit_settings import read_edit_settings, write_edit_settings

        write_edit_settings(dest, read_edit_settings(source) or EDITOR_SETTINGS)
        for name in EDITOR_EXTRAS:
            if (source / name).is_file():
                shutil.copy2(source / name, dest / name)


def _save_half_weights(kind: str, source: Path, dest: Path) -> None:
    if kind in ("base", "editor"):
        from diffusers import DiffusionPipeline

        from ip2p.models import pipeline_kwargs

        pipe = DiffusionPipeline.from_pretrained(source, **pipeline_kwargs(DiffusionPipeline))
        pipe.to(torch.float16)
        pipe.save_pretrained(dest, safe_serialization=True)
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPModel

    model = (CLIPModel if kind == "clip" else AutoModelForCausalLM).from_pretrained(source)
    model.to(torch.float16).save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(dest)
    for extra in ("preprocessor_config.json", "generation_config.json"):
        if (source / extra).is_file() and not (dest / extra).is_file():
            shutil.copy2(source / extra, dest / extra)


def bundle(sources: dict[str, str | os.PathLike], root: Path | None = None) -> dict[str, Path]:
    """Write each ``{kind: folder}`` into the package's weights folder (atomically per kind); return the paths."""
    done = {}
    for kind, source in sources.items():
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        source = Path(source)
        if not source.is_dir():
            raise ValueError(f"{source}: no such folder")
        final = (root / kind) if root is not None else toy_model_path(kind)
        with atomic_dir(final) as tmp:
            _save_half(kind, source, tmp)
        done[kind] = final
    return done
