"""The settings of ``ip2p toy quality`` (:class:`QualityConfig`) and the names of its measurements.

Kept apart from :mod:`.quality` so that building the command line imports neither numpy nor PIL; re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ip2p.flags import option

MEASUREMENTS = ("vae", "clip", "t2i", "t2i_brief")
DEFAULT_GUIDANCE = 4.0
DEFAULT_GUIDANCE_RESCALE = 0.0


def unknown_measurements(only) -> str:
    """The one-line complaint about names in ``only`` that are not measurements, or "" when all are."""
    unknown = set(only) - set(MEASUREMENTS)
    if not unknown:
        return ""
    return f"unknown measurement(s) {', '.join(sorted(unknown))}; expected {', '.join(MEASUREMENTS)}"


@dataclass
class QualityConfig:
    """What ``ip2p toy quality`` measures, of which model, and how (see :func:`ip2p.toy.quality.measure_quality`)."""

    model: str | None = option(
        "train-base output folder, a base pipeline folder, or 'toy' (the bundled weights)",
        default=None,
        metavar="DIR",
        required=True,
    )
    out: str | None = option(
        "where quality.json and samples.png go (default: MODEL/quality; toy-quality for 'toy')",
        default=None,
        metavar="DIR",
    )
    device: str = option("auto (CUDA when present), cpu, cuda, cuda:1, mps", default="auto")
    only: str = option(
        "comma-separated subset of vae,clip,t2i,t2i_brief (brief captions)", default="vae,clip,t2i"
    )
    guidance: str = option(
        "classifier-free guidance scale, or several comma-separated (the best is kept)",
        default=str(DEFAULT_GUIDANCE),
    )
    guidance_rescale: float = option(
        "rescale of the guided prediction towards the conditional one's std (0: none)",
        default=DEFAULT_GUIDANCE_RESCALE,
    )
    steps: int = option("sampling steps", default=50)
    limit: int | None = option("only the first N captions of each set (quick looks)", default=None)
    checkpoint: str | None = option(
        "'latest' or a step: evaluate a UNet stage checkpoint's EMA weights", default=None
    )
    seed: int = option("seed of the samples' generators (sample i of a set: seed + i)", default=0)

    def measurements(self) -> tuple[str, ...]:
        return tuple(self.only.split(","))

    def guidance_scales(self) -> tuple[float, ...]:
        try:
            return tuple(float(g) for g in self.guidance.split(","))
        except ValueError:
            raise ValueError(f"--guidance takes numbers separated by commas, not {self.guidance!r}") from None

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("toy-quality") if self.model == "toy" else Path(self.model) / "quality"

    def check(self) -> None:
        """One-line errors (ValueError) for a configuration nothing can measure."""
        if not self.model:
            raise ValueError(
                "--model is required: a train-base output folder, a base pipeline folder, or 'toy'"
            )
        problem = unknown_measurements(self.measurements())
        if problem:
            raise ValueError(f"--only: {problem}")
        self.guidance_scales()
