"""The toy world as a plug-in of the core: everything the core reaches by the name ``toy`` is registered here.

``register`` is the ``ip2p.plugins`` entry point ``toy`` (pyproject.toml); ``ip2p.registry.load_plugin(
"ip2p.toy.plugin")`` loads it explicitly. It registers, in ``ip2p.registry``:

- ``MODELS["toy"]``: the bundled editor and base (text-to-image) model, with the evaluation defaults of the toy
  world (64 px, 20 steps, the toy CLIP and base, the test set ``toy:300``);
- ``CLIP_MODELS["toy"]``, ``LANGUAGE_MODELS["toy"]``: the bundled CLIP and language model;
- ``LM_BUILDERS["toy"]``: ``finetune-text --model toy`` (:func:`ip2p.toy.lm.build_for_finetune`), and the seed
  augmentations ``paraphrase`` and ``relabel``;
- ``CAPTION_SOURCES["toy"]`` (held-out toy captions, 1000 by default) and ``SEED_SOURCES["toy"]`` (the 700 toy
  seed triplets);
- ``TEST_SETS`` ``toy``, ``toy-val``, ``toy-brief``, ``toy-val-brief`` and ``METRICS["oracle"]``
  (:mod:`ip2p.toy.testsets`), the multi-turn ``toy-multiturn`` and ``toy-multiturn-val``
  (:mod:`ip2p.toy.multiturn`).

Nothing heavy is imported here: each registered callable imports what it needs when called.
"""

from __future__ import annotations

from pathlib import Path

TOY_MODEL = "toy"  # the name of everything registered here
WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_CAPTIONS = 1000  # ``toy`` as a caption source
DEFAULT_SEEDS = 700  # ``toy`` as a seed source: the paper's number of human-written triplets


def toy_model_path(kind: str = "editor") -> Path:
    """Where the bundled toy-world weights of ``kind`` ("editor", "base", "clip", "lm") live in the package."""
    return WEIGHTS / kind


def _captions(count: int | None) -> list[str]:
    from ip2p.toy.lm import heldout_toy_captions

    return heldout_toy_captions(count or DEFAULT_CAPTIONS)


def _seeds(count: int | None) -> list[dict[str, str]]:
    from ip2p.toy.seeds import seed_triplets

    return seed_triplets(count or DEFAULT_SEEDS, seed=0)


def _lm_builder(config):
    from ip2p.toy.lm import build_for_finetune

    return build_for_finetune(config)


def _paraphrase(triplet, rng):
    from ip2p.toy.lm import paraphrase

    return paraphrase(triplet, rng)


def _relabel(triplet, rng):
    from ip2p.toy.lm import relabel

    return relabel(triplet, rng)


def register() -> None:
    """Fill ``ip2p.registry`` with the toy world's models, CLIP, language model, sources, test sets and oracle."""
    from ip2p import registry
    from ip2p.toy.multiturn import TEST_SETS as MULTITURN_TEST_SETS
    from ip2p.toy.testsets import ORACLE, TEST_SETS, TOY_TEST_SIZE

    registry.MODELS.provide(
        TOY_MODEL,
        registry.NamedModel(
            editor=toy_model_path("editor"),
            base=toy_model_path("base"),
            eval_defaults={
                "steps": 20,
                "resolution": 64,
                "clip": TOY_MODEL,
                "base": TOY_MODEL,
                "test_set": f"toy:{TOY_TEST_SIZE}",
            },
            description="the toy world's bundled editor and base model (64 px)",
        ),
    )
    registry.CLIP_MODELS.provide(TOY_MODEL, toy_model_path("clip"))
    registry.LANGUAGE_MODELS.provide(TOY_MODEL, toy_model_path("lm"))
    registry.LM_BUILDERS.provide(TOY_MODEL, _lm_builder)
    registry.TRIPLET_AUGMENTATIONS.provide("paraphrase", _paraphrase)
    registry.TRIPLET_AUGMENTATIONS.provide("relabel", _relabel)
    registry.CAPTION_SOURCES.provide(TOY_MODEL, _captions)
    registry.SEED_SOURCES.provide(TOY_MODEL, _seeds)
    for name, load in {**TEST_SETS, **MULTITURN_TEST_SETS}.items():
        registry.TEST_SETS.provide(name, load)
    registry.METRICS.provide("oracle", ORACLE)
