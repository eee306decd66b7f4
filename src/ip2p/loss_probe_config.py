"""Settings of ``ip2p loss-probe`` (the denoising loss by timestep of editors and a text-to-image model), without
torch: ``ip2p loss-probe --help`` builds its flags from :class:`LossProbeConfig`; :mod:`ip2p.loss_probe` runs it.

Example::

    config = LossProbeConfig(data="data/toy-pairs", editors=["toy"], base="runs/base", n=64)
    config.validate()
"""

from __future__ import annotations

from dataclasses import dataclass

from ip2p.flags import option

DEFAULT_TIMESTEPS = (50, 250, 500, 750, 950, 999)


def _timesteps(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers separated by commas") from None


@dataclass
class LossProbeConfig:
    """Pairs with targets, the models to compare, and the noise levels to compare them at."""

    data: str = option(
        "pairs with targets: our Parquet shards or a folder of them", default="", required=True
    )
    editors: list[str] = option(
        "an editing model (repeatable)", default_factory=list, flag="--editor", repeat=True, metavar="EDITOR"
    )
    base: str | None = option("a text-to-image model, conditioned on output captions", default=None)
    n: int = option("pairs, the first N", default=192, flag="-n")
    timesteps: list[int] = option(
        "timesteps, comma-separated",
        default_factory=lambda: list(DEFAULT_TIMESTEPS),
        parse=_timesteps,
        metavar="T,T,...",
    )
    resolution: int = option("image side", default=64)
    seed: int = option("noise seed", default=0)
    json: str | None = option("also write the results to this JSON file", default=None)

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"-n must be at least 1, got {self.n}")
        if not self.editors and not self.base:
            raise ValueError("nothing to probe: give --editor MODEL (repeatable) and/or --base MODEL")
        if not self.timesteps or any(not 0 <= t < 1000 for t in self.timesteps):
            raise ValueError(f"timesteps must lie in [0, 999], got {self.timesteps}")
