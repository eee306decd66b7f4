"""CLIP scores and the filter of generated pairs (paper section 3.1.2; PAPER.md 3.5 and 4).

The original ``metrics/clip_similarity.py`` embeds both images and both captions with CLIP ViT-L/14 and computes
four cosine similarities; ``generate_img_dataset.py`` keeps a candidate when all four pass their thresholds and
keeps the best by directional similarity. The math is here as small pure functions; ``ClipScorer`` wraps a
transformers ``CLIPModel`` and is one implementation of the ``Scorer`` callable the job takes (tests pass fakes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

DEFAULT_CLIP = "openai/clip-vit-large-patch14"  # the original's ViT-L/14
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipScores:
    """The four similarities of K candidate pairs, each (K,); names as the original's metadata.jsonl."""

    clip_sim_0: torch.Tensor  # image 0 vs the input caption
    clip_sim_1: torch.Tensor  # image 1 vs the edited caption
    clip_sim_dir: torch.Tensor  # directional: image change vs caption change
    clip_sim_image: torch.Tensor  # image 0 vs image 1

    def row(self, i: int) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)[i]) for f in fields(self)}


@dataclass(frozen=True)
class ClipThresholds:
    """Minimum scores of a kept pair. Paper: 0.2 / 0.2 / 0.75; the original code's image-image default is 0.7
    (``--clip-img-threshold``), its ``configs/generate.yaml`` 0.75 (PAPER.md 11.2)."""

    image_caption: float = 0.2  # both images against their captions
    directional: float = 0.2
    image_image: float = 0.75


def directional_similarity(
    image_0: torch.Tensor, image_1: torch.Tensor, text_0: torch.Tensor, text_1: torch.Tensor
) -> torch.Tensor:
    """cos(E_I(x1) - E_I(x0), E_T(c1) - E_T(c0)) for (K, D) L2-normalised features -> (K,) (Gal et al. 2021;
    paper 3.1.2 and 4). It measures whether the image changed the way the caption did."""
    return F.cosine_similarity(image_1 - image_0, text_1 - text_0)


def clip_similarities(
    image_0: torch.Tensor, image_1: torch.Tensor, text_0: torch.Tensor, text_1: torch.Tensor
) -> ClipScores:
    """The four similarities of the original ``ClipSimilarity.forward`` from (K, D) features, normalised here.

    Example:
        >>> e = torch.eye(4)
        >>> s = clip_similarities(e[:1], e[1:2], e[:1], e[1:2])
        >>> float(s.clip_sim_0), float(s.clip_sim_image), round(float(s.clip_sim_dir), 6)
        (1.0, 0.0, 1.0)
    """
    image_0, image_1, text_0, text_1 = (
        F.normalize(x.float(), dim=-1) for x in (image_0, image_1, text_0, text_1)
    )
    return ClipScores(
        clip_sim_0=F.cosine_similarity(image_0, text_0),
        clip_sim_1=F.cosine_similarity(image_1, text_1),
        clip_sim_dir=directional_similarity(image_0, image_1, text_0, text_1),
        clip_sim_image=F.cosine_similarity(image_0, image_1),
    )


def passes_clip_filter(scores: ClipScores, thresholds: ClipThresholds = ClipThresholds()) -> torch.Tensor:
    """(K,) bool: all four scores at or above their thresholds (original ``generate_img_dataset.py``)."""
    return (
        (scores.clip_sim_image >= thresholds.image_image)
        & (scores.clip_sim_dir >= thresholds.directional)
        & (scores.clip_sim_0 >= thresholds.image_caption)
        & (scores.clip_sim_1 >= thresholds.image_caption)
    )


def select_top_k(
    directional: Sequence[float], passed: Sequence[bool], seeds: Sequence[int], k: int
) -> list[int]:
    """Indices of the (at most) ``k`` passing candidates with the highest directional similarity, best first.

    Ties go to the larger seed, as the original's ``sorted([(clip_sim_dir, seed), ...], reverse=True)``.

    Example:
        >>> select_top_k([0.3, 0.5, 0.4], [True, False, True], [1, 2, 3], k=1)
        [2]
    """
    ranked = sorted(
        (i for i in range(len(directional)) if passed[i]),
        key=lambda i: (directional[i], seeds[i]),
        reverse=True,
    )
    return ranked[:k]


Scorer = Callable[[torch.Tensor, torch.Tensor, Sequence[str], Sequence[str]], ClipScores]


class ClipScorer:
    """CLIP similarities of image pairs and their captions through a transformers ``CLIPModel``.

    Images enter in [0, 1], (K, 3, H, W); they are resized (bicubic, no crop, as the original) to the vision
    tower's size and normalised with the model's mean and std.

    Example:
        >>> scorer = ClipScorer.from_pretrained("openai/clip-vit-large-patch14")
        >>> scores = scorer(images_0, images_1, ["a cat"] * k, ["a dog"] * k)  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        tokenizer,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        device: torch.device | str = "cpu",
        name: str = "clip",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.name = name

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device: torch.device | str = "cpu") -> ClipScorer:
        """A CLIP folder (``save_pretrained`` layout), a hub id, or a name of ``ip2p.registry.CLIP_MODELS``
        (``"toy"``: the toy world's CLIP, from its plug-in)."""
        from transformers import AutoTokenizer, CLIPModel

        from ip2p.models import ModelLoadError
        from ip2p.registry import CLIP_MODELS

        text = str(source)
        named = CLIP_MODELS.find(text)
        path = Path(named() if callable(named) else named) if named is not None else Path(text).expanduser()
        if named is not None and not (path / "config.json").is_file():
            raise ModelLoadError(f"the {text} CLIP is not installed at {path}; train it or pass --clip PATH")
        where = str(path) if path.is_dir() else text
        try:
            model = CLIPModel.from_pretrained(where)
            tokenizer = AutoTokenizer.from_pretrained(where)
        except Exception as exc:  # the hub client and loaders raise many types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(
                f"could not load the CLIP model {text!r} ({first}); pass a local CLIP folder "
                "with --clip PATH where the hub cannot be reached"
            ) from exc
        mean, std = OPENAI_MEAN, OPENAI_STD
        config = path / "preprocessor_config.json"
        if path.is_dir() and config.is_file():
            pre = json.loads(config.read_text())
            mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
        return cls(model, tokenizer, mean, std, device=device, name=text)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(K, 3, H, W) in [0, 1] -> (K, D) unit image features."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (K, 3, H, W), got {tuple(images.shape)}")
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bicubic", align_corners=False)
        x = ((x - self.mean) / self.std).to(self.device, self.model.dtype)  # (K, 3, S, S)
        return F.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(K,) texts -> (K, D) unit text features (truncated to CLIP's length, as ``clip.tokenize(truncate=True)``)."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return F.normalize(_features(out).float(), dim=-1)

    def __call__(
        self,
        images_0: torch.Tensor,
        images_1: torch.Tensor,
        captions_0: Sequence[str],
        captions_1: Sequence[str],
    ) -> ClipScores:
        """Scores of K pairs (the original ``clip_similarity(x0, x1, [caption], [output])``)."""
        if not (len(images_0) == len(images_1) == len(captions_0) == len(captions_1)):
            raise ValueError(
                f"need as many captions as pairs: {len(images_0)}, {len(images_1)}, "
                f"{len(captions_0)}, {len(captions_1)}"
            )
        texts = list(dict.fromkeys([*captions_0, *captions_1]))  # each distinct caption once
        features = dict(zip(texts, self.encode_texts(texts), strict=True))
        text_0 = torch.stack([features[c] for c in captions_0])
        text_1 = torch.stack([features[c] for c in captions_1])
        return clip_similarities(self.encode_images(images_0), self.encode_images(images_1), text_0, text_1)


def _features(out) -> torch.Tensor:
    """transformers 4 returns the projected features; 5 returns an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
