"""Named parts that plug-ins provide: models, CLIP scorers, test sets, metrics, stage-1 sources, LM builders.

The core knows none of these by name. A plug-in is a function ``register()`` that fills the registries below; it
is declared under the entry-point group ``ip2p.plugins`` of its distribution::

    [project.entry-points."ip2p.plugins"]
    toy = "ip2p.toy.plugin:register"

Plug-ins load lazily, all at once, the first time a name is looked up and not found (so importing this module costs
nothing), or explicitly with :func:`load_plugin`. A lookup of an unknown name fails with one line that lists the
known names. This module imports nothing heavy: the values registered are paths and callables whose imports happen
when they are called.

Example (a metric of your own, measured beside CLIP's by ``ip2p evaluate``)::

    import numpy as np

    from ip2p.registry import METRICS, Metric

    def brightness(items, inputs, edited):  # one dict per item
        return [{"brightness": float(np.asarray(im.convert("L")).mean() / 255)} for im in edited]

    METRICS.register("brightness", Metric(brightness, columns=("brightness",)))
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

ENTRY_POINT_GROUP = "ip2p.plugins"

# The plug-ins this distribution declares, by name: loaded as well when the entry points do not list them (a
# source checkout on PYTHONPATH, or an editable install older than the entry points), so that ``--model toy`` works
# there too. Names, not imports: the core never imports the toy world.
BUILTIN_PLUGINS = ("ip2p.tiny:register", "ip2p.toy.plugin:register")

T = TypeVar("T")

# A model or CLIP given by name resolves to a folder, or to a factory that builds it (no arguments).
Source = str | os.PathLike | Callable[[], Any]


class RegistryError(ValueError):
    """A name is unknown, registered twice or malformed; the message lists the known names."""


_loaded: dict[str, str | None] = {}  # "module:function" -> None once loaded, "loading", or why it failed
_entry_points_read = False


def load_plugin(target: str) -> None:
    """Load the plug-in ``"module"`` (its ``register``) or ``"module:function"``, once.

    Example:
        >>> load_plugin("ip2p.toy.plugin")  # the toy world, without entry points (e.g. a source checkout)
    """
    module, _, function = target.partition(":")
    key = f"{module}:{function or 'register'}"
    if key in _loaded:
        return
    _loaded[key] = "loading"  # a plug-in that looks names up while registering does not load itself again
    try:
        getattr(importlib.import_module(module), function or "register")()
    except Exception as exc:
        _loaded[key] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        raise
    _loaded[key] = None


def load_plugins() -> None:
    """Load every plug-in declared under the entry-point group ``ip2p.plugins``, and the built-in ones
    (:data:`BUILTIN_PLUGINS`) the group does not list (once; failures are kept and named by the errors of later
    lookups instead of breaking every command)."""
    global _entry_points_read
    if _entry_points_read:
        return
    _entry_points_read = True
    from importlib import metadata

    declared = [ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    for target in [*declared, *BUILTIN_PLUGINS]:  # load_plugin skips those already loaded (or failed)
        try:
            load_plugin(target)
        except Exception:  # recorded in _loaded, reported where a name it would have given is missing
            continue


def plugin_failures() -> dict[str, str]:
    """Plug-ins that failed to load, with the first line of their error."""
    return {k: v for k, v in _loaded.items() if v not in (None, "loading")}


class Registry(Generic[T]):
    """Names of one kind (``kind``, e.g. "model") and what they stand for."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, value: T, *, replace: bool = False) -> T:
        """Add ``name``; registering a taken name again needs ``replace=True``."""
        if not name or ":" in name or name != name.strip():
            raise RegistryError(f"{self.kind} names are non-empty, without ':' or outer spaces; got {name!r}")
        if name in self._items and not replace:
            raise RegistryError(f"the {self.kind} {name!r} is already registered (pass replace=True)")
        self._items[name] = value
        return value

    def provide(self, name: str, value: T) -> T:
        """Register ``name`` unless it is taken: what plug-ins call, so that a name registered by hand before the
        plug-ins loaded keeps its value."""
        if name in self._items:
            return self._items[name]
        return self.register(name, value)

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def find(self, name: str) -> T | None:
        """What ``name`` stands for, loading the plug-ins if it is not known yet; None if no plug-in gives it."""
        if name not in self._items:
            load_plugins()
        return self._items.get(name)

    def get(self, name: str) -> T:
        """What ``name`` stands for; :class:`RegistryError` (listing the known names) if nothing gives it."""
        value = self.find(name)
        if value is None:
            raise RegistryError(f"unknown {self.kind} {name!r}; {self.known()}")
        return value

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def known(self) -> str:
        """``known: a, b`` (and plug-ins that failed to load), for error messages."""
        text = f"known: {', '.join(self.names()) or 'none'}"
        failed = plugin_failures()
        if failed:
            text += (
                " (plug-ins that failed to load: " + "; ".join(f"{k} {v}" for k, v in failed.items()) + ")"
            )
        return text

    def items(self) -> Iterator[tuple[str, T]]:
        load_plugins()
        return iter(list(self._items.items()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None


def split_count(source: str) -> tuple[str, str | None]:
    """``"toy:300"`` -> ``("toy", "300")``; ``"toy"`` -> ``("toy", None)``."""
    name, colon, count = source.partition(":")
    return name, count if colon else None


def find_counted(registry: Registry[T], source: str) -> tuple[str, T, int | None] | None:
    """For sources written ``NAME`` or ``NAME:N`` (test sets, caption and seed sources): the name, what it stands
    for and N (None where not given), or None when ``NAME`` is not registered (so ``source`` may be a path).

    Raises:
        RegistryError: ``NAME`` is registered but N is not a positive whole number.
    """
    name, count = split_count(str(source))
    value = registry.find(name)
    if value is None:
        return None
    if count is None:
        return name, value, None
    if not count.isdigit() or int(count) < 1:
        raise RegistryError(f"{source}: write {name} or {name}:N with N a positive number")
    return name, value, int(count)


# -- what the registries hold ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NamedModel:
    """A model known by name. ``editor`` (8-channel UNet) and ``base`` (its text-to-image model) are each a
    diffusers folder or a factory returning ``EditComponents``; ``eval_defaults`` are the ``ip2p evaluate``
    settings (``EvalRunConfig`` fields: steps, resolution, clip, base, test_set) used for this model unless given.
    """

    editor: Source | None = None
    base: Source | None = None
    eval_defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class Metric:
    """A measurement of edits, selectable in ``ip2p evaluate`` (``--metrics``) beside the built-in CLIP and pixel
    ones.

    ``measure(items, inputs, edited)`` gets a batch of ``EvalItem``, the inputs as every method saw them and the
    edited images (PIL, the inputs' sizes), and returns one dict per item of ``column -> float`` ({} for an item it
    cannot judge). ``columns`` are averaged in the summary, ``by_type`` also per edit type (``column/type``);
    ``plane`` = (x column, y column, x label, y label) adds a plane to the plot and to ``curve_margin``, named as
    the metric; ``headline`` is the column shown in the printed summary table.
    """

    measure: Callable[[list, list, list], list[dict[str, float]]]
    columns: tuple[str, ...]
    by_type: tuple[str, ...] = ()
    plane: tuple[str, str, str, str] | None = None
    headline: str | None = None


MODELS: Registry[NamedModel] = Registry("model")
"""``--model NAME`` of every command that loads an editor or a text-to-image model."""

CLIP_MODELS: Registry[Source] = Registry("CLIP model")
"""``--clip NAME``: a CLIP folder (``save_pretrained`` layout) or a factory returning one."""

LANGUAGE_MODELS: Registry[Source] = Registry("language model")
"""``gen-text --model NAME``: a trained causal LM folder."""

LM_BUILDERS: Registry[Callable[[Any], tuple[Any, Any]]] = Registry("language-model builder")
"""``finetune-text --model NAME``: ``builder(FinetuneConfig) -> (model, tokenizer)``, built from scratch."""

TRIPLET_AUGMENTATIONS: Registry[Callable[[Any, Any], Any]] = Registry("triplet augmentation")
"""``augment(Triplet, random.Random) -> Triplet`` applied per epoch by ``finetune-text`` (``paraphrase``,
``relabel``)."""

CAPTION_SOURCES: Registry[Callable[[int | None], list[str]]] = Registry("caption source")
"""``gen-text --captions NAME[:N]``: ``source(N or None) -> captions``."""

SEED_SOURCES: Registry[Callable[[int | None], list[dict]]] = Registry("seed-triplet source")
"""``--seeds NAME[:N]``: ``source(N or None) -> [{input, edit, output}, ...]``."""

TEST_SETS: Registry[Callable[[int | None, int | None], list]] = Registry("test set")
"""``evaluate --test-set NAME[:N]``: ``load(N or None, limit or None) -> [EvalItem, ...]``."""

METRICS: Registry[Metric] = Registry("metric")
"""``evaluate --metrics NAME,...``: :class:`Metric` plug-ins."""
