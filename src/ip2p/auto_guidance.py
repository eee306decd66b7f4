"""Automatic guidance (``--guidance auto``): the text and image guidance scales chosen per edit from its instruction.

The paper leaves the two scales to the user, tuned by hand per image (section 3.2.1). At edit time an editor knows
the input image and the instruction, nothing else: no captions, so no CLIP directional similarity to rank candidate
edits by, and CLIP's similarity of an output to an imperative instruction rewards the wrong image for removals
("remove the circle" is most like an image that shows a circle). What does carry the signal is what kind of edit the
instruction asks for: recolourings, removals and changes of style want different scales.

So the scales are learned once, on a validation split judged by an exact metric (the toy oracle's success): the
editor is swept over a small grid of (text, image) settings there (``ip2p evaluate --sweep grid``), and a new
instruction takes the setting that succeeded most often for its ``k`` nearest validation instructions, nearness
being the cosine of the editor's own text embedding (the mean of the text encoder's last hidden states; SDXL: the
pooled output). Ties, and settings no neighbour tried, go to the best fixed setting of the split. ``k`` is chosen by
leave-one-out success on the split itself. The choice costs no UNet evaluation (the text encoder's pass is the one
the edit makes anyway): an edit at the chosen scales costs ``steps x 3`` UNet evaluations, as any edit.

The predictor lives beside the model as ``auto_guidance.json`` (the bundled toy editor carries one).

Example:
    >>> pipe = EditPipeline.from_pretrained("toy")
    >>> guide = GuidancePredictor.from_pretrained("toy")
    >>> result = auto_edit(pipe, guide, image, "make the circle green", seed=0)
    >>> result.config.text_guidance_scale, result.info["auto_guidance"]["extra_unet_evaluations"]
    (3.0, 0)
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ip2p.edit_config import EditConfig

if TYPE_CHECKING:
    from ip2p.pipeline import EditPipeline, EditResult

GUIDANCE_FILE = "auto_guidance.json"
GUIDANCE_MODES = ("fixed", "auto")
NEIGHBOURS = (5, 10, 20, 40)  # the k tried by leave-one-out when fitting
UNET_BRANCHES = 3  # dual guidance: (text, image), (image), (neither) per step


class GuidanceError(ValueError):
    """A predictor that cannot be read, fitted or used; the message names the file or the value."""


def unet_evaluations(steps: int, candidates: int = 1, branches: int = UNET_BRANCHES) -> int:
    """UNet evaluations (one image's branch at one step each) of ``candidates`` edits of ``steps`` steps."""
    return candidates * steps * branches


@torch.inference_mode()
def instruction_features(pipe: EditPipeline, instructions: list[str]) -> torch.Tensor:
    """(B,) instructions -> (B, D) unit vectors: the editor's own text embedding, mean over the tokens of its last
    hidden states (SDXL: the pooled output of the second encoder)."""
    if pipe.components.is_sdxl:
        features = pipe.encode_text_sdxl(list(instructions))[1]  # (B, P)
    else:
        features = pipe.encode_text(list(instructions)).mean(dim=1)  # (B, T, D) -> (B, D)
    return F.normalize(features.float().cpu(), dim=-1)


def neighbour_votes(
    features: torch.Tensor, train: torch.Tensor, success: torch.Tensor, k: int, exclude_self: bool = False
) -> torch.Tensor:
    """(B, K) mean success of each setting among the ``k`` training rows nearest each query (cosine of unit
    features (B, D) against (N, D); ``success`` (N, K)); ``exclude_self`` for leave-one-out (queries = rows)."""
    sims = features @ train.T  # (B, N)
    if exclude_self:
        sims = sims - 2.0 * torch.eye(len(features), len(train))  # a row is never its own neighbour
    k = min(k, train.shape[0] - int(exclude_self))
    nearest = sims.topk(k, dim=1).indices  # (B, k)
    return success[nearest].mean(dim=1)  # (B, k, K) -> (B, K)


def pick_settings(votes: torch.Tensor, prior: torch.Tensor) -> list[int]:
    """The setting of highest vote per row of (B, K) ``votes``; ties to the highest ``prior`` (K,) (the split's
    mean success: the best fixed setting first)."""
    ranked = votes + 1e-6 * (prior - prior.min()) / max(float(prior.max() - prior.min()), 1e-12)
    return ranked.argmax(dim=1).tolist()


@dataclass
class GuidancePredictor:
    """Guidance scales per instruction, learned on a validation split (see the module docstring).

    ``settings``: the grid, (text, image) pairs; ``instructions``: the split's; ``success``: (N, K) the metric of
    instruction i's edit at setting j (0 or 1 for the oracle's success); ``neighbours``: k; ``source``: how it was
    made; ``report``: the fit's numbers (leave-one-out success per k, the best fixed setting's)."""

    settings: list[tuple[float, float]]
    instructions: list[str]
    success: list[list[float]]
    neighbours: int = 10
    source: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    # the validation instructions' features per pipeline, dropped with the pipeline (an id could be reused)
    _features: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.settings = [(float(t), float(i)) for t, i in self.settings]
        self.validate()

    def validate(self) -> None:
        if not self.settings or not self.instructions:
            raise GuidanceError("a guidance predictor needs settings and instructions")
        if len(self.success) != len(self.instructions) or any(
            len(r) != len(self.settings) for r in self.success
        ):
            raise GuidanceError(
                f"success must be {len(self.instructions)} rows of {len(self.settings)} settings, one per "
                "instruction and setting"
            )
        if self.neighbours < 1:
            raise GuidanceError(f"neighbours must be at least 1, got {self.neighbours}")
        for text, image in self.settings:
            EditConfig(text_guidance_scale=text, image_guidance_scale=image).validate()

    # -- the choice ------------------------------------------------------------------------------------------
    def prior(self) -> torch.Tensor:
        """(K,) the split's mean success of each setting."""
        return torch.tensor(self.success, dtype=torch.float32).mean(dim=0)

    def best_fixed(self) -> tuple[float, float]:
        """The single setting of highest mean success on the split (ties: the first in the grid)."""
        return self.settings[int(self.prior().argmax())]

    def _train_features(self, pipe: EditPipeline) -> torch.Tensor:
        if pipe not in self._features:
            self._features[pipe] = instruction_features(pipe, self.instructions)  # (N, D)
        return self._features[pipe]

    def choose(self, pipe: EditPipeline, instructions: list[str]) -> list[tuple[float, float]]:
        """The (text, image) scales for each instruction, always a setting of the grid."""
        if not instructions:
            return []
        votes = neighbour_votes(
            instruction_features(pipe, instructions),
            self._train_features(pipe),
            torch.tensor(self.success, dtype=torch.float32),
            self.neighbours,
        )
        return [self.settings[j] for j in pick_settings(votes, self.prior())]

    def config_for(self, pipe: EditPipeline, instruction: str, config: EditConfig) -> EditConfig:
        """``config`` with the scales chosen for ``instruction``."""
        text, image = self.choose(pipe, [instruction])[0]
        return replace(config, text_guidance_scale=text, image_guidance_scale=image)

    # -- fitting ---------------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        pipe: EditPipeline,
        instructions: list[str],
        success: list[list[float]],
        settings: list[tuple[float, float]],
        neighbours: tuple[int, ...] = NEIGHBOURS,
        source: str = "",
    ) -> GuidancePredictor:
        """Choose ``k`` among ``neighbours`` by leave-one-out success on the split (ties: the larger k, the
        smoother choice) and return the predictor."""
        if len(instructions) < 2:
            raise GuidanceError("fitting needs at least two instructions")
        predictor = cls(settings, list(instructions), [list(map(float, r)) for r in success], 1, source)
        train = predictor._train_features(pipe)
        table = torch.tensor(predictor.success, dtype=torch.float32)  # (N, K)
        prior = predictor.prior()
        rows = torch.arange(len(instructions))
        loo = {}
        for k in neighbours:
            chosen = torch.tensor(
                pick_settings(neighbour_votes(train, train, table, k, exclude_self=True), prior)
            )
            loo[int(k)] = float(table[rows, chosen].mean())
        best_k = max(loo, key=lambda k: (loo[k], k))
        predictor.neighbours = best_k
        predictor.report = {
            "leave_one_out_success": loo,
            "best_fixed": list(predictor.best_fixed()),
            "best_fixed_success": float(prior.max()),
            "per_setting_success": {
                f"{t:g},{i:g}": float(s) for (t, i), s in zip(settings, prior, strict=True)
            },
            "items": len(instructions),
        }
        return predictor

    # -- files -----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_features")
        data["settings"] = [list(s) for s in self.settings]
        return data

    def save(self, path: str | os.PathLike) -> Path:
        from ip2p.fileio import write_json_atomic

        return write_json_atomic(Path(path), self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> GuidancePredictor:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(
                [tuple(s) for s in data["settings"]],
                list(data["instructions"]),
                data["success"],
                int(data["neighbours"]),
                str(data.get("source", "")),
                dict(data.get("report", {})),
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, GuidanceError):
                raise GuidanceError(f"{path}: {exc}") from None
            raise GuidanceError(f"{path}: not a guidance predictor ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike) -> GuidancePredictor:
        """The predictor a model carries (``auto_guidance.json`` in its folder; ``"toy"``: the bundled editor's)."""
        from ip2p.edit_settings import model_folder

        folder = model_folder(source)
        path = folder / GUIDANCE_FILE if folder is not None else None
        if path is None or not path.is_file():
            raise GuidanceError(
                f"the model {str(source)!r} has no {GUIDANCE_FILE}, so --guidance auto cannot choose its scales; "
                "fit one with ip2p evaluate --sweep grid --fit-auto-guidance PATH on a validation split"
            )
        return cls.load(path)


def fit_from_records(
    pipe: EditPipeline, records: list[dict], items: list, method: str = "ip2p", metric: str = "oracle_success"
) -> GuidancePredictor:
    """A predictor from the records of an ``ip2p evaluate`` grid sweep of ``method`` over ``items`` (the test
    set's items, for their instructions): every item must have a record at every (text, image) setting."""
    rows = [r for r in records if r.get("method") == method and metric in r]
    settings = sorted({(r["text_guidance_scale"], r["image_guidance_scale"]) for r in rows})
    if len(settings) < 2:
        raise GuidanceError(
            f"fitting needs a sweep of at least two settings with {metric!r}; found {len(settings)}"
        )
    table = {(r["item"], r["text_guidance_scale"], r["image_guidance_scale"]): float(r[metric]) for r in rows}
    success = []
    for item in items:
        missing = [s for s in settings if (item.id, *s) not in table]
        if missing:
            raise GuidanceError(
                f"item {item.id} has no record at text, image = {missing[0]}; finish the sweep first"
            )
        success.append([table[(item.id, *s)] for s in settings])
    return GuidancePredictor.fit(
        pipe,
        [it.instruction for it in items],
        success,
        settings,
        source=f"{metric} of {method} on {len(items)} items",
    )


def auto_edit(
    pipe: EditPipeline,
    predictor: GuidancePredictor,
    image: Any,
    instruction: str,
    config: EditConfig | None = None,
    **kw,
) -> EditResult:
    """``pipe(image, instruction, ...)`` at the scales ``predictor`` chooses; ``result.info["auto_guidance"]``
    records them and the cost (UNet evaluations; none extra for the choice)."""
    config = pipe.config_for() if config is None else config
    config = predictor.config_for(pipe, instruction, config) if instruction.strip() else config
    result = pipe(image, instruction, config, **kw)
    result.info["auto_guidance"] = guidance_info(config, predictor)
    return result


def guidance_info(config: EditConfig, predictor: GuidancePredictor) -> dict[str, Any]:
    """What an automatically guided edit records: the scales chosen, the grid, the cost in UNet evaluations."""
    return {
        "text_guidance_scale": config.text_guidance_scale,
        "image_guidance_scale": config.image_guidance_scale,
        "grid": [list(s) for s in predictor.settings],
        "extra_unet_evaluations": 0,
        "unet_evaluations": unet_evaluations(config.num_inference_steps) * config.num_images,
    }
