"""Settings of the web app (``ip2p serve``) and of the demo (``ip2p demo``), without torch or gradio.

``ip2p.app`` re-exports :class:`ServeConfig` and ``ip2p.demo`` :class:`DemoConfig`; the command line builds their
flags from these dataclasses.

Example::

    config = ServeConfig(model="toy", port=7861, concurrency=2)
    config.validate()
"""

from __future__ import annotations

from dataclasses import dataclass

from ip2p.edit_config import DEFAULT_MAX_PIXELS, ModelChoice, RuntimeOptions
from ip2p.flags import option

AUTO_MODEL = "auto"  # the bundled toy editor where installed, else the tiny random model (labelled as such)


@dataclass
class ServeConfig(ModelChoice, RuntimeOptions):
    """How ``ip2p serve`` runs: the model, where it listens and the limits that keep it up. The controls start at
    the model's own edit settings (its ``edit_settings.json``), else the paper's."""

    model: str = option(
        "editing model: 'auto' (the bundled toy editor, or a tiny random model, labelled as such, where it is "
        "missing), a diffusers folder, a .safetensors/.ckpt file, a hub id, 'toy' or 'tiny'",
        default=AUTO_MODEL,
    )
    host: str = option(  # loopback: reachable from this machine only, unless asked otherwise
        "address to listen on; 0.0.0.0 exposes the app to the network", default="127.0.0.1"
    )
    port: int | None = option("port to listen on", default=7860)
    share: bool = option("also open a public gradio.live link (needs internet)", default=False)
    concurrency: int = option(  # the original's queue(concurrency_count=1)
        "edits that run at the same time", default=1
    )
    max_queue: int | None = option(  # None = unbounded
        "requests that may wait; more get a 'queue is full' answer", default=16
    )
    max_upload_mb: float = option("largest upload accepted, in MB", default=10.0)
    max_pixels: int = option("refuse uploaded images with more pixels than this", default=DEFAULT_MAX_PIXELS)

    def validate(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_queue is not None and self.max_queue < 1:
            raise ValueError(f"the queue size must be at least 1, got {self.max_queue}")
        if self.max_upload_mb <= 0:
            raise ValueError(f"the maximum upload size must be positive, got {self.max_upload_mb} MB")
        if self.max_pixels < 1:
            raise ValueError(f"the maximum pixel count must be positive, got {self.max_pixels}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is outside 1..65535")
        self.validate_options()


@dataclass
class DemoConfig:
    """``ip2p demo``: one toy scene edited by the bundled editor, at the model's own settings unless given."""

    output: str = option("output folder", default="outputs/demo", aliases=("-o",))
    instruction: str | None = option("the edit (default: one chosen for the scene)", default=None)
    seed: int = option("seed of the scene and of the edit", default=0)
    model: str = option(
        "'auto' (the bundled toy editor, or a tiny random model where it is missing), 'toy', 'tiny' or any "
        "model path",
        default=AUTO_MODEL,
    )
    steps: int | None = option("sampler steps (default: the model's own setting)", default=None)
