"""The metrics of the standard editing benchmarks, as their own evaluation code defines them.

MagicBrush (Zhang et al. 2023, Table 2; the definitions below follow ``evaluation/image_eval.py`` of
github.com/OSU-NLP-Group/MagicBrush), each between the edited image and the benchmark's ground-truth target:

- ``l1``, ``l2``: ``nn.L1Loss()`` and ``nn.MSELoss()`` (means over every pixel and channel) of the two images as
  ``ToTensor()`` makes them ([0, 1] RGB), after ``gen_img.resize(gt_img.size)``: the output resized to the
  target's size with Pillow's default filter for RGB (bicubic);
- ``clip_i``: the cosine of CLIP ViT-B/32 image embeddings (``clip.load("ViT-B/32")`` and its own preprocessing:
  resize of the short side to 224 bicubic, centre crop 224, OpenAI mean and std);
- ``dino``: the cosine of DINO ViT-S/16 embeddings (``torch.hub`` ``dino_vits16``: the [CLS] token after the
  final norm) with resize of the short side to 256 bicubic, centre crop 224, ImageNet mean and std;
- ``clip_t``: the cosine of the output's CLIP image embedding and the CLIP text embedding of the target's local
  caption (``local_captions.json`` of the test set), the same model and preprocessing as ``clip_i``.

Emu Edit (Sheynin et al. 2023, section 5), each between the edited image and the *input*: ``clip_dir`` (CLIP
directional similarity, cos(E_I(output) - E_I(input), E_T(output caption) - E_T(input caption)) of unit
embeddings, Gal et al. 2021), ``clip_img`` (CLIP image cosine of input and output), ``clip_out`` (output image vs
output caption), ``l1`` (as above, the output resized to the input's size) and ``dino`` (as above, input vs
output). The paper names the metrics, not their checkpoints or preprocessing; we use MagicBrush's (the
benchmark's images are MagicBrush's) and record the models in every run.

Both models load through transformers: CLIP as a ``CLIPModel``, DINO as a ``ViTModel`` (``facebook/dino-vits16``
is the hub's conversion of ``dino_vits16``; its ``last_hidden_state[:, 0]`` is the [CLS] token after the final
layer norm, as DINO's own forward returns). Crops scale with a model's input size S (224 for both published
models): resize to round(S * 256 / 224) for DINO, to S for CLIP, then crop S.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ip2p.models import ModelLoadError

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"  # MagicBrush's clip.load("ViT-B/32")
DEFAULT_DINO_MODEL = "facebook/dino-vits16"  # MagicBrush's torch.hub dino_vits16
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAGICBRUSH_COLUMNS = ("l1", "l2", "clip_i", "dino", "clip_t")
EMU_EDIT_COLUMNS = ("clip_dir", "clip_img", "clip_out", "l1", "dino")
PREPROCESSING = {
    "pixels": "output resized to the reference's size (PIL bicubic), both RGB in [0, 1]; mean |d| and mean d^2",
    "clip": "short side to S bicubic, centre crop S (S: the CLIP's input size), OpenAI mean/std; texts "
    "truncated to CLIP's 77 tokens",
    "dino": "short side to round(S*256/224) bicubic, centre crop S (S: the ViT's input size), ImageNet mean/std; "
    "[CLS] of last_hidden_state",
}


# -- pure functions --------------------------------------------------------------------------------------------
def pixel_distances(output: Image.Image, reference: Image.Image) -> dict[str, float]:
    """L1 and L2 (mean squared error) of ``output`` resized to ``reference``'s size, [0, 1] RGB (MagicBrush's
    ``eval_distance``).

    Example:
        >>> a, b = Image.new("RGB", (4, 4), (0, 0, 0)), Image.new("RGB", (2, 2), (51, 51, 51))
        >>> {k: round(v, 4) for k, v in pixel_distances(a, b).items()}
        {'l1': 0.2, 'l2': 0.04}
    """
    reference = reference.convert("RGB")
    out = output.convert("RGB").resize(reference.size, Image.Resampling.BICUBIC)
    diff = np.asarray(out, dtype=np.float32) / 255.0 - np.asarray(reference, dtype=np.float32) / 255.0
    return {"l1": float(np.abs(diff).mean()), "l2": float(np.square(diff).mean())}


def resize_center_crop(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """torchvision's ``Resize(resize)`` (short side to ``resize``, long side truncated in proportion, bicubic)
    then ``CenterCrop(crop)``, on a PIL image."""
    image = image.convert("RGB")
    w, h = image.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    image = image.resize(size, Image.Resampling.BICUBIC)
    w, h = image.size
    if w < crop or h < crop:
        raise ValueError(f"an image of {w}x{h} cannot be centre-cropped to {crop}")
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def to_normalized_tensor(images: Sequence[Image.Image], mean, std) -> torch.Tensor:
    """PIL images of one size -> (B, 3, H, W): ``ToTensor()`` then ``Normalize(mean, std)``."""
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images]))
    x = x.permute(0, 3, 1, 2)  # (B, 3, H, W)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of (B, D) features -> (B,) (``1 - scipy.spatial.distance.cosine`` of each row)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def clip_direction(
    image_in: torch.Tensor, image_out: torch.Tensor, text_in: torch.Tensor, text_out: torch.Tensor
) -> torch.Tensor:
    """Emu Edit's CLIPdir: cos(E_I(out) - E_I(in), E_T(c_out) - E_T(c_in)) of unit (B, D) features -> (B,)."""
    image_in, image_out, text_in, text_out = (
        F.normalize(x.float(), dim=-1) for x in (image_in, image_out, text_in, text_out)
    )
    return F.cosine_similarity(image_out - image_in, text_out - text_in, dim=-1)


# -- the metric models --------------------------------------------------------------------------------------------
def _load_error(kind: str, source: str, flag: str, exc: Exception) -> ModelLoadError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ModelLoadError(
        f"could not load the {kind} model {source!r} ({first}); pass a local folder with {flag} PATH where the "
        "hub cannot be reached"
    )


def _resolve(source: str, flag: str) -> str:
    """A registered CLIP name (``ip2p.registry.CLIP_MODELS``, e.g. the toy world's ``toy``), a folder or a hub id."""
    from ip2p.registry import CLIP_MODELS

    named = CLIP_MODELS.find(source)
    if named is None:
        path = Path(source).expanduser()
        return str(path) if path.is_dir() else source
    path = Path(named() if callable(named) else named)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the {source} CLIP is not installed at {path}; pass {flag} PATH")
    return str(path)


def _preprocessor_stats(where: str, mean, std):
    config = Path(where) / "preprocessor_config.json"
    if config.is_file():
        pre = json.loads(config.read_text())
        return tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
    return mean, std


class ClipEncoder:
    """A transformers ``CLIPModel`` with CLIP's own preprocessing (short side to S, centre crop S), fp32.

    Example:
        >>> clip = ClipEncoder.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> float(cosine(clip.encode_images([a]), clip.encode_texts(["a cat"])))  # doctest: +SKIP
    """

    def __init__(self, model, tokenizer, mean=OPENAI_MEAN, std=OPENAI_STD, device="cpu", name: str = "clip"):
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.mean, self.std, self.name = tuple(mean), tuple(std), name
        self.size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike, device="cpu", flag: str = "--clip-model"
    ) -> ClipEncoder:
        """A CLIP folder, a hub id or a registered CLIP name; a failure is one line naming ``flag``."""
        from transformers import AutoTokenizer, CLIPModel

        where = _resolve(str(source), flag)
        try:
            model = CLIPModel.from_pretrained(where)
            tokenizer = AutoTokenizer.from_pretrained(where)
        except Exception as exc:  # the hub client and loaders raise many types
            raise _load_error("CLIP", str(source), flag, exc) from exc
        mean, std = _preprocessor_stats(where, OPENAI_MEAN, OPENAI_STD)
        return cls(model, tokenizer, mean, std, device=device, name=str(source))

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S) as ``clip.load``'s transform makes them."""
        crops = [resize_center_crop(im, self.size, self.size) for im in images]
        return to_normalized_tensor(crops, self.mean, self.std)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, D) image embeddings (unnormalised; the metrics take cosines)."""
        x = self.preprocess(images).to(self.device)
        return _features(self.model.get_image_features(pixel_values=x)).float().cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (B, D) text embeddings, truncated to CLIP's length (``clip.tokenize`` refuses longer ones)."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return _features(out).float().cpu()


class DinoEncoder:
    """A transformers ``ViTModel`` (DINO's weights) with DINO's evaluation preprocessing, fp32: its [CLS] token.

    Example:
        >>> dino = DinoEncoder.from_pretrained("facebook/dino-vits16")  # doctest: +SKIP
    """

    def __init__(self, model, mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu", name: str = "dino"):
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval().requires_grad_(False)
        self.mean, self.std, self.name = tuple(mean), tuple(std), name
        self.size = int(model.config.image_size)
        self.resize = int(round(self.size * 256 / 224))

    @classmethod
    def from_pretrained(
        cls, source: str | os.PathLike, device="cpu", flag: str = "--dino-model"
    ) -> DinoEncoder:
        """A ViT folder or hub id; a failure is one line naming ``flag``."""
        from transformers import ViTModel

        path = Path(str(source)).expanduser()
        where = str(path) if path.is_dir() else str(source)
        try:
            model = ViTModel.from_pretrained(where, add_pooling_layer=False)
        except Exception as exc:  # the hub client and loaders raise many types
            raise _load_error("DINO", str(source), flag, exc) from exc
        mean, std = _preprocessor_stats(where, IMAGENET_MEAN, IMAGENET_STD)
        return cls(model, mean, std, device=device, name=str(source))

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S): short side to round(S*256/224) bicubic, centre crop S, ImageNet stats."""
        crops = [resize_center_crop(im, self.resize, self.size) for im in images]
        return to_normalized_tensor(crops, self.mean, self.std)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, D): the [CLS] token after the final layer norm."""
        x = self.preprocess(images).to(self.device)
        return self.model(pixel_values=x).last_hidden_state[:, 0].float().cpu()  # (B, D)


def _features(out) -> torch.Tensor:
    """transformers 4 returns the projected features; 5 returns an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# -- the benchmarks' metrics of a batch -------------------------------------------------------------------------
def magicbrush_scores(
    outputs: Sequence[Image.Image],
    targets: Sequence[Image.Image],
    captions: Sequence[str | None],
    clip: ClipEncoder | None,
    dino: DinoEncoder | None,
) -> list[dict[str, float]]:
    """MagicBrush's five metrics of each (output, target, local caption); CLIP ones need ``clip``, ``dino`` needs
    ``dino``, ``clip_t`` a caption."""
    if not (len(outputs) == len(targets) == len(captions)):
        raise ValueError(
            f"need one target and caption per output: {len(outputs)}, {len(targets)}, {len(captions)}"
        )
    rows = [pixel_distances(o, t) for o, t in zip(outputs, targets, strict=True)]
    if clip is not None and rows:
        e_out = clip.encode_images(outputs)
        sim = cosine(e_out, clip.encode_images(targets))
        with_caption = [i for i, c in enumerate(captions) if c]
        text = (
            cosine(e_out[with_caption], clip.encode_texts([captions[i] for i in with_caption]))
            if with_caption
            else []
        )
        for i, row in enumerate(rows):
            row["clip_i"] = float(sim[i])
        for j, i in enumerate(with_caption):
            rows[i]["clip_t"] = float(text[j])
    if dino is not None and rows:
        sim = cosine(dino.encode_images(outputs), dino.encode_images(targets))
        for i, row in enumerate(rows):
            row["dino"] = float(sim[i])
    return rows


def emu_edit_scores(
    inputs: Sequence[Image.Image],
    outputs: Sequence[Image.Image],
    input_captions: Sequence[str | None],
    output_captions: Sequence[str | None],
    clip: ClipEncoder | None,
    dino: DinoEncoder | None,
) -> list[dict[str, float]]:
    """Emu Edit's five metrics of each (input, output, captions); ``clip_dir`` needs both captions."""
    if not (len(inputs) == len(outputs) == len(input_captions) == len(output_captions)):
        raise ValueError("need one input, output and pair of captions per item")
    rows = [{"l1": pixel_distances(o, i)["l1"]} for i, o in zip(inputs, outputs, strict=True)]
    if clip is not None and rows:
        e_in, e_out = clip.encode_images(inputs), clip.encode_images(outputs)
        for i, value in enumerate(cosine(e_in, e_out)):
            rows[i]["clip_img"] = float(value)
        with_out = [i for i, c in enumerate(output_captions) if c]
        if with_out:
            t_out = clip.encode_texts([output_captions[i] for i in with_out])
            for j, value in enumerate(cosine(e_out[with_out], t_out)):
                rows[with_out[j]]["clip_out"] = float(value)
        both = [i for i in with_out if input_captions[i]]
        if both:
            t_in = clip.encode_texts([input_captions[i] for i in both])
            t_out = clip.encode_texts([output_captions[i] for i in both])
            for j, value in enumerate(clip_direction(e_in[both], e_out[both], t_in, t_out)):
                rows[both[j]]["clip_dir"] = float(value)
    if dino is not None and rows:
        for i, value in enumerate(cosine(dino.encode_images(inputs), dino.encode_images(outputs))):
            rows[i]["dino"] = float(value)
    return rows
