"""Stage "clip": CLIP trained contrastively on (render, caption) pairs with one-attribute hard negatives and
auxiliary attribute read-outs; and the optional stage "clip_vision": its image tower alone fine-tuned against the
frozen text tower.

Only the batch differs from the usual recipe: half its scenes are one-attribute variants of the other half and
every image also meets captions of its one-attribute variants, so that the model binds each colour, kind, size and
position to its shape (the bar it must pass is retrieval against such distractors)."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ip2p.fileio import atomic_dir, restore_dir, write_json_atomic
from ip2p.harness import (
    Checkpointer,
    prefixed,
    run_steps,
    schedule_end,
    step_batches,
    unprefixed,
)

from ..data import load_dataset, one_attribute_variants, to_tensor, training_scenes
from ..models import BaseModelConfig, build_clip, build_tokenizer, count_parameters, tokenizer_corpus
from ..scene import BACKGROUNDS, COLORS, KINDS, SIZES, STYLES, Scene
from .common import (
    atomic_copytree,
    autocast,
    clip_final_path,
    clip_vision_done_path,
    lr_at,
    save_pretrained_atomic,
    settings_record,
    step_seed,
    tokenize,
    use_attention,
)
from .config import TrainSettings


def clip_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """CLIP's input: uint8 (N, H, W, 3) renders -> (N, 3, H, W) in [-1, 1] (mean 0.5, std 0.5 normalisation)."""
    return images if isinstance(images, torch.Tensor) else to_tensor(images)


def text_embeddings(clip, tokenizer, texts: list[str], device: torch.device) -> torch.Tensor:
    """Normalised CLIP text embeddings. CLIP's text tower is causal and pools at the EOS token, so padding to the
    batch's longest text gives the same embeddings as padding to ``model_max_length``."""
    return text_embeddings_of_ids(clip, tokenize(tokenizer, texts, device, pad_to_max=False))


def text_embeddings_of_ids(clip, ids: torch.Tensor) -> torch.Tensor:
    emb = clip.get_text_features(input_ids=ids)
    emb = getattr(emb, "pooler_output", emb)
    return F.normalize(emb.float(), dim=-1)


def image_embeddings(clip, pixels: torch.Tensor) -> torch.Tensor:
    emb = clip.get_image_features(pixel_values=pixels)
    emb = getattr(emb, "pooler_output", emb)
    return F.normalize(emb.float(), dim=-1)


def clip_batch(
    scenes: list[Scene], rng: random.Random, batch: int, hard: int
) -> tuple[list[Scene], list[str], list[Scene], list[str]]:
    """A CLIP batch: ``batch // 2`` scenes and one one-attribute variant of each, with a varied caption each; and
    ``hard`` captions of further one-attribute variants per scene (extra negatives for image -> text).

    Returns (scenes, their captions, the negatives' scenes, the negatives' captions).
    """
    from ..captions import caption

    base = [scenes[rng.randrange(len(scenes))] for _ in range(batch // 2)]
    picked: list[Scene] = []
    for s in base:
        picked += [s, rng.choice(one_attribute_variants(s))]
    captions = [caption(s, rng) for s in picked]
    negative_scenes: list[Scene] = []
    for s in picked:
        variants = one_attribute_variants(s)
        negative_scenes += rng.sample(variants, min(hard, len(variants)))
    negatives = [caption(v, rng) for v in negative_scenes]
    return picked, captions, negative_scenes, negatives


def clip_loss(
    clip, image_emb: torch.Tensor, text_emb: torch.Tensor, negative_emb: torch.Tensor, same: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE; image -> text also against the hard negatives. ``same[i, j]`` is True where candidate
    caption j (positives, then negatives) describes image i's scene: those are not negatives of image i (a
    variant's variant can be the scene itself), so they are left out of its softmax."""
    scale = clip.logit_scale.exp().clamp(max=100)
    b = image_emb.shape[0]
    target = torch.arange(b, device=image_emb.device)
    eye = torch.zeros_like(same)
    eye[target, target] = True
    mask = same & ~eye
    i2t = (scale * image_emb @ torch.cat([text_emb, negative_emb]).T).masked_fill(mask, float("-inf"))
    t2i = (scale * text_emb @ image_emb.T).masked_fill(mask[:, :b], float("-inf"))
    return 0.5 * (F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target))


def clip_batch_maker(
    scenes: list[Scene], tokenizer, settings: TrainSettings, stage: str, text_targets: bool
) -> Callable[[int], dict]:
    """``make(step)``: a CLIP stage's batch of step ``step`` (drawn from ``(seed, stage, step)``), ready for the
    loss; with ``text_targets``, also the attribute targets of every caption (the text heads' labels)."""
    from ..render import render_batch

    def make(step: int) -> dict:
        rng = random.Random(step_seed(settings.seed, stage, step))
        picked, captions, negative_scenes, negatives = clip_batch(
            scenes, rng, settings.clip_batch, settings.clip_hard_captions
        )
        batch = {
            "step": step,
            "pixels": clip_pixels(render_batch(picked)),
            "ids": tokenize(tokenizer, captions + negatives, torch.device("cpu"), pad_to_max=False),
            "n_captions": len(captions),
            "same": same_scene_mask(picked, picked + negative_scenes, torch.device("cpu")),
            "image_targets": torch.tensor([scene_targets(x) for x in picked]),
        }
        if text_targets:
            batch["text_targets"] = torch.tensor([scene_targets(x) for x in picked + negative_scenes])
        return batch

    return make


def same_scene_mask(picked: list[Scene], candidates: list[Scene], device: torch.device) -> torch.Tensor:
    ids: dict[Scene, int] = {}
    a = torch.tensor([ids.setdefault(s, len(ids)) for s in picked])
    c = torch.tensor([ids.setdefault(s, len(ids)) for s in candidates])
    return (a[:, None] == c[None, :]).to(device)


# Attribute targets of a scene, for CLIP's auxiliary heads: background, style, then per grid cell its shape's
# kind, colour and size (class 0: the cell is empty).
_ATTRIBUTE_CLASSES = (
    (len(BACKGROUNDS), len(STYLES)) + (len(KINDS) + 1,) * 9 + (len(COLORS) + 1,) * 9 + (len(SIZES) + 1,) * 9
)


def scene_targets(scene: Scene) -> list[int]:
    from ..scene import POSITIONS

    cells = [scene.shape_at(p) for p in POSITIONS]
    return (
        [list(BACKGROUNDS).index(scene.background), STYLES.index(scene.style)]
        + [0 if c is None else 1 + KINDS.index(c.kind) for c in cells]
        + [0 if c is None else 1 + list(COLORS).index(c.color) for c in cells]
        + [0 if c is None else 1 + SIZES.index(c.size) for c in cells]
    )


class AttributeHeads(torch.nn.Module):
    """Linear read-outs of every scene attribute from CLIP's (normalised) image and text embeddings.

    Training only (they are not part of the saved CLIPModel): with contrastive learning alone, a CLIP this small
    learns colours in a few hundred steps but not kinds, sizes, positions or the style (measured: 5% top-1 against
    one-attribute distractors after 400 steps); asking both embeddings to carry every attribute gives each tower a
    dense signal, and the contrastive loss then aligns embeddings that already hold the same facts.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.image = torch.nn.Linear(dim, sum(_ATTRIBUTE_CLASSES))
        self.text = torch.nn.Linear(dim, sum(_ATTRIBUTE_CLASSES))
        # Unit-norm inputs have coordinates ~1/sqrt(dim): rescale them so that confident logits are within reach
        # of the first hundred steps (unscaled, the heads had learnt nothing but the background after 200).
        self.input_scale = dim**0.5

    def read_image(self, emb: torch.Tensor) -> torch.Tensor:
        return self.image(emb * self.input_scale)

    def read_text(self, emb: torch.Tensor) -> torch.Tensor:
        return self.text(emb * self.input_scale)

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses, start = [], 0
        for i, n in enumerate(_ATTRIBUTE_CLASSES):
            losses.append(F.cross_entropy(logits[:, start : start + n], targets[:, i]))
            start += n
        return torch.stack(losses).mean()


def train_clip(out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device) -> Path:
    """Train CLIP contrastively with one-attribute hard negatives; save it with its tokenizer and processor."""
    from transformers import CLIPImageProcessor, CLIPTokenizer

    out_dir = Path(out_dir)
    final = clip_final_path(out_dir)
    if (final / "config.json").is_file():
        return final
    work = out_dir / "work" / "clip"
    _, scenes = load_dataset(out_dir / "work", settings.n_scenes, settings.seed)
    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer_config.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    else:
        n_texts = settings.tokenizer_texts
        tokenizer = build_tokenizer(cfg.clip, tokenizer_corpus(n_texts - n_texts // 3, n_texts // 3))
        save_pretrained_atomic(tokenizer, tok_dir)
    clip = build_clip(cfg.clip, tokenizer, seed=settings.seed).to(device).train()
    use_attention(clip, settings.attention)
    heads = AttributeHeads(cfg.clip.projection_dim).to(device)
    params = [*clip.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.clip_lr, weight_decay=0.05)
    ckpt = Checkpointer(work / "checkpoints", settings.keep_checkpoints)

    def load_weights(weights: dict[str, torch.Tensor]) -> None:
        clip.load_state_dict(unprefixed("clip", weights))
        heads.load_state_dict(unprefixed("heads", weights))

    start = ckpt.resume(opt, device, load_weights)
    print(
        f"CLIP: {count_parameters(clip) / 1e6:.2f}M parameters (text {count_parameters(clip.text_model) / 1e6:.2f}M), "
        f"vocabulary {len(tokenizer)}, max length {tokenizer.model_max_length}, resuming at step {start}",
        flush=True,
    )

    make_batch = clip_batch_maker(scenes, tokenizer, settings, "clip", text_targets=True)

    end = schedule_end(settings.clip_steps, settings.clip_stop_step)
    batches = step_batches(make_batch, start, end, settings.loader_workers)

    def step_fn(step: int) -> float:
        batch = next(batches)
        assert batch["step"] == step
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        n_captions = batch["n_captions"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings.clip_steps, settings.clip_lr, 100)
        with autocast(device, settings.clip_precision):
            image_emb = image_embeddings(clip, batch["pixels"])
            all_text = text_embeddings_of_ids(clip, batch["ids"])
        loss = clip_loss(clip, image_emb, all_text[:n_captions], all_text[n_captions:], batch["same"])
        if settings.clip_attribute_weight > 0:
            aux = heads.loss(heads.read_image(image_emb), batch["image_targets"])
            aux = aux + heads.loss(heads.read_text(all_text), batch["text_targets"])
            loss = loss + settings.clip_attribute_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    def save_fn(step: int) -> None:
        weights = {**prefixed("clip", clip.state_dict()), **prefixed("heads", heads.state_dict())}
        ckpt.save(step, weights, {"optimizer": opt.state_dict()})

    done = run_steps(
        "clip",
        settings.clip_steps,
        start,
        step_fn,
        save_fn,
        settings.ckpt_every,
        settings.threads,
        settings.clip_minutes,
        settings.clip_stop_step,
    )

    clip = use_attention(clip.to("cpu").eval(), "sdpa")
    processor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": cfg.image_size},
        do_center_crop=True,
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    with atomic_dir(final) as tmp:
        clip.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    write_json_atomic(work / "settings.json", settings_record(cfg, settings, done), indent=1)
    return final


def _is_vision_weight(name: str) -> bool:
    return name.startswith(("vision_model.", "visual_projection."))


def train_clip_vision(
    out_dir: Path, cfg: BaseModelConfig, settings: TrainSettings, device: torch.device
) -> Path:
    """Fine-tune CLIP's image tower and projection against its frozen text tower; rewrite ``out_dir/clip``.

    A CLIP trained jointly under a time limit can end with a text tower that tells one-attribute variants apart
    better than its image tower does (the bundled one: 75.8% top-1 against one-attribute distractors). Training the
    image side alone, with the CLIP stage's batches of hard negatives and fresh image attribute heads, raises that
    without touching the text embeddings the UNet was trained on: the text tower, its projection and the logit
    scale are frozen, and the stage's test checks that they come out bit for bit the same.

    The stage starts from a copy of ``clip/`` taken when it first runs (``work/clip_vision/start``), so rerunning it
    never tunes an already tuned tower; it refuses to go on if ``clip/``'s text tower has changed since.
    """
    from transformers import CLIPModel, CLIPTokenizer

    out_dir = Path(out_dir)
    final = clip_final_path(out_dir)
    done_path = clip_vision_done_path(out_dir)
    work = done_path.parent
    source = work / "start"
    restore_dir(final)  # a swap below cut between its two renames
    if done_path.is_file():
        return final
    if not (final / "config.json").is_file():
        raise FileNotFoundError(f"the clip_vision stage fine-tunes {final}: run the clip stage first")
    if not (source / "config.json").is_file():
        atomic_copytree(final, source)
    tokenizer = CLIPTokenizer.from_pretrained(source)
    clip = use_attention(
        CLIPModel.from_pretrained(source, dtype=torch.float32).to(device), settings.attention
    )
    current = load_file(final / "model.safetensors")
    text = {k: v for k, v in clip.state_dict().items() if not _is_vision_weight(k)}
    if any(not torch.equal(v.cpu(), current[k].to(v.dtype)) for k, v in text.items() if k in current):
        raise ValueError(
            f"{final}'s text tower differs from the one this stage started from ({source}): the CLIP stage ran "
            f"again; delete {work} to tune the new CLIP"
        )
    for name, param in clip.named_parameters():
        param.requires_grad_(_is_vision_weight(name))
    clip.eval()
    clip.vision_model.train()
    heads = AttributeHeads(cfg.clip.projection_dim).to(device)
    params = [p for p in clip.parameters() if p.requires_grad] + list(heads.image.parameters())
    opt = torch.optim.AdamW(params, lr=settings.clip_vision_lr, weight_decay=0.05)
    ckpt = Checkpointer(work / "checkpoints", settings.keep_checkpoints)

    def load_weights(weights: dict[str, torch.Tensor]) -> None:
        missing, unexpected = clip.load_state_dict(unprefixed("vision", weights), strict=False)
        if unexpected or any(_is_vision_weight(k) for k in missing):
            raise ValueError(f"{ckpt.folder}: not a clip_vision checkpoint of this CLIP")
        heads.image.load_state_dict(unprefixed("heads", weights))

    start = ckpt.resume(opt, device, load_weights)
    scenes = training_scenes(settings.n_scenes, settings.seed)
    print(
        f"CLIP image tower: {sum(p.numel() for p in params) / 1e6:.2f}M trainable parameters, text tower frozen, "
        f"resuming at step {start}",
        flush=True,
    )

    make_batch = clip_batch_maker(scenes, tokenizer, settings, "clip_vision", text_targets=False)

    total = settings.clip_vision_steps
    batches = step_batches(make_batch, start, total, settings.loader_workers)

    def step_fn(step: int) -> float:
        batch = next(batches)
        assert batch["step"] == step
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        n_captions = batch["n_captions"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, settings.clip_vision_lr, settings.clip_vision_warmup)
        with autocast(device, settings.clip_precision):
            with torch.no_grad():
                all_text = text_embeddings_of_ids(clip, batch["ids"])
            image_emb = image_embeddings(clip, batch["pixels"])
        loss = clip_loss(clip, image_emb, all_text[:n_captions], all_text[n_captions:], batch["same"])
        if settings.clip_attribute_weight > 0:
            aux = heads.loss(heads.read_image(image_emb), batch["image_targets"])
            loss = loss + settings.clip_attribute_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss.detach())

    def save_fn(step: int) -> None:
        vision = {k: v for k, v in clip.state_dict().items() if _is_vision_weight(k)}
        weights = {**prefixed("vision", vision), **prefixed("heads", heads.image.state_dict())}
        ckpt.save(step, weights, {"optimizer": opt.state_dict()})

    done = run_steps("clip_vision", total, start, step_fn, save_fn, settings.ckpt_every, settings.threads)
    clip = use_attention(clip.to("cpu").eval(), "sdpa")
    with atomic_dir(final) as tmp:  # two renames: a crash between them is repaired when the stage runs again
        shutil.copytree(source, tmp, dirs_exist_ok=True)  # tokenizer and image processor
        clip.save_pretrained(tmp, safe_serialization=True)
    write_json_atomic(done_path, settings_record(cfg, settings, done), indent=1)
    return final
