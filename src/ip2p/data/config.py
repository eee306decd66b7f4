"""Settings of ``ip2p data convert`` and ``ip2p data inspect``, without torch or ``datasets``: the command line
builds its flags from them (``ip2p data --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from ip2p.flags import option

FORMAT_NAMES = ("auto", "hub", "disk", "parquet", "imagefolder", "webdataset", "original")
WRITABLE_NAMES = ("parquet", "imagefolder", "webdataset", "disk", "original")


@dataclass
class ColumnFlags:
    """Which column holds each field; unset: the first of the official schema's and diffusers' names present."""

    original_image_column: str | None = option(
        "column of the input image (unset: original_image, input_image or image)", default=None
    )
    edit_prompt_column: str | None = option(
        "column of the instruction (unset: edit_prompt, instruction or edit)", default=None
    )
    edited_image_column: str | None = option(
        "column of the edited image (unset: edited_image or output_image)", default=None
    )
    original_prompt_column: str | None = option(
        "column of the input caption (unset: original_prompt, input_caption, input or caption)", default=None
    )
    edited_prompt_column: str | None = option(
        "column of the edited caption (unset: edited_prompt, output_caption or output)", default=None
    )

    def columns(self):
        from ip2p.data.formats import Columns

        return Columns(
            self.original_image_column,
            self.edit_prompt_column,
            self.edited_image_column,
            self.original_prompt_column,
            self.edited_prompt_column,
        )


@dataclass
class ConvertConfig(ColumnFlags):
    """``ip2p data convert SOURCE... -o OUT --to FORMAT``."""

    source: list[str] = option(
        "dataset: files, globs or a folder in any layout, or a hub id",
        default_factory=list,
        positional=True,
        required=True,
    )
    output: str = option("new folder to write", default="", aliases=("-o",), required=True)
    to: str = option("layout to write", default="parquet", choices=WRITABLE_NAMES)
    data_format: str = option("layout of SOURCE (auto: detected)", default="auto", choices=FORMAT_NAMES)
    shard_size: int = option("examples per Parquet or tar shard", default=1000)


@dataclass
class InspectConfig(ColumnFlags):
    """``ip2p data inspect SOURCE... [--grid PNG] [--validate]``."""

    source: list[str] = option(
        "dataset: files, globs or a folder in any layout, or a hub id",
        default_factory=list,
        positional=True,
        required=True,
    )
    data_format: str = option("layout of SOURCE (auto: detected)", default="auto", choices=FORMAT_NAMES)
    grid: str | None = option("write a PNG grid of the first examples here", default=None)
    examples: int = option("examples in the grid", default=8)
    validate: bool = option(
        "read every row: list each image that does not decode and each empty instruction by file and row "
        "(exit 1 if any)",
        default=False,
    )
    json: bool = option("print the summary as JSON", default=False)
