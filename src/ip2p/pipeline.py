"""EditPipeline: edit an image by an instruction with dual classifier-free guidance (paper section 3.2.1).

The model sees three conditionings per step, batched into one UNet call:
(text + image), (image only), (neither). ``dual_guidance`` combines the three predictions.
"""

from __future__ import annotations

import copy
import random
import threading
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ip2p import masking, pipeline_options
from ip2p.devices import pick_device, pick_dtype
from ip2p.edit_config import EditConfig, RuntimeOptions
from ip2p.edit_settings import merge_settings, read_edit_settings, validate_settings
from ip2p.guidance import dual_guidance
from ip2p.imaging import (
    Prepared,
    load_image,
    pil_to_tensor,
    prepare_image,
    restore_image,
    tensor_to_pil,
)
from ip2p.masking import MaskLike
from ip2p.models import DEFAULT_MODEL, EditComponents
from ip2p.sampling import StepCallback, denoise, make_scheduler
from ip2p.text_encoding import encode_prompts, encode_prompts_sdxl

# A fast tokenizer keeps its padding/truncation settings in shared state that each call rewrites, so two threads
# (the web app's concurrent edits) can get each other's padding; tokenizing is cheap, so it is serialised.
_TOKENIZER_LOCK = threading.Lock()


@dataclass
class EditResult:
    """Edited images, the input as the model saw it, and everything needed to reproduce them."""

    images: list[Image.Image]
    input_image: Image.Image
    seed: int | None
    instruction: str
    config: EditConfig
    model: str
    info: dict[str, Any] = field(default_factory=dict)
    latents: torch.Tensor | None = None  # (n, 4, h, w) final latents, before decoding
    mask: Image.Image | None = None  # the mask used ("L", white: edited), at the images' size; None: no mask

    def metadata(self, index: int = 0) -> dict[str, str]:
        """What to store beside image ``index`` (PNG text chunks): enough to reproduce it."""
        masked = {"ip2p:mask": self.info["mask"]} if "mask" in self.info else {}
        return {
            "ip2p:instruction": self.instruction,
            "ip2p:seed": "" if self.seed is None else str(self.seed),
            "ip2p:image_index": str(index),
            "ip2p:text_guidance_scale": str(self.config.text_guidance_scale),
            "ip2p:image_guidance_scale": str(self.config.image_guidance_scale),
            "ip2p:steps": str(self.config.num_inference_steps),
            "ip2p:scheduler": str(self.info.get("scheduler", self.config.scheduler)),
            "ip2p:resolution": str(self.config.resolution),
            "ip2p:model": self.model,
            **masked,
        }


class EditPipeline:
    """Instruction-based image editing with an InstructPix2Pix model.

    ``settings`` are the model's recommended edit settings (its ``edit_settings.json``, read by
    ``from_pretrained``): a call without a value for a setting uses the model's, else the paper's default.

    Example:
        >>> pipe = EditPipeline.from_pretrained("toy")
        >>> result = pipe(image, "make the circle green", seed=0)  # the toy editor's 64 px, 4 steps, 3 / 2
        >>> result.images[0].save("edited.png")
    """

    def __init__(
        self,
        components: EditComponents,
        device: str | torch.device | None = None,
        dtype=None,
        settings: dict[str, Any] | None = None,
    ):
        self.components = components
        self.settings = validate_settings(dict(settings or {}), "settings")
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype, prefer_bf16=True)
        for module in (components.unet, components.vae, *components.text_encoders):
            if module.device != self.device or module.dtype != self.dtype:
                module.to(self.device, self.dtype)
            module.eval().requires_grad_(False)
        if components.is_sdxl and self.dtype == torch.float16 and components.vae.config.force_upcast:
            # SDXL's VAE overflows in fp16: diffusers' SDXL pipelines encode and decode with it in fp32.
            components.vae.to(torch.float32)
        self._schedulers: dict[str, Any] = {}
        # LoRA adapters, memory and speed options in effect (ip2p.pipeline_options)
        self.options: dict[str, Any] = {}

    @classmethod
    def from_pretrained(
        cls,
        source: str = DEFAULT_MODEL,
        device: str | None = None,
        dtype: str | None = None,
        config: str | None = None,
        options: RuntimeOptions | None = None,
    ) -> EditPipeline:
        """Load from a diffusers folder, a hub id, an original checkpoint file, ``"toy"`` or ``"tiny"``, with the
        model's recommended settings (``edit_settings.json`` in its folder, where present). ``options``: LoRA
        adapters, memory and speed options (:class:`~ip2p.edit_config.RuntimeOptions`), applied after loading. With
        an adapter trained from a text-to-image model (it carries its input convolution), ``source`` is that model:
        it is turned into an 8-channel editor for the adapter (a named model's text-to-image one)."""
        settings = read_edit_settings(source)  # a bad file fails before the weights load
        components = pipeline_options.editor_components(source, config, options)
        pipe = cls(components, device=device, dtype=dtype, settings=settings)
        if options is not None:
            pipe.apply_options(options)
        return pipe

    # -- adapters, memory and speed (ip2p.pipeline_options) --------------------------------------------------
    def load_lora(self, path: str, scale: float = 1.0, name: str | None = None) -> str:
        """Add a LoRA adapter (diffusers/PEFT format, a ``.safetensors`` file or a folder holding one) at ``scale``;
        adapters loaded before stay active at their own scales. Returns the adapter's name.

        Example:
            >>> pipe.load_lora("my-lora.safetensors", scale=0.8)
            'lora0'
        """
        return pipeline_options.load_lora(self, path, scale, name)

    def enable_memory_options(
        self,
        cpu_offload: str | None = None,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        attention_slicing: str | int | None = None,
    ) -> None:
        """Less GPU memory for the same edits: ``cpu_offload`` "model" or "sequential" (needs a GPU), VAE slicing
        and tiling, ``attention_slicing`` "auto", "max" or N heads at once."""
        pipeline_options.enable_memory_options(self, cpu_offload, vae_slicing, vae_tiling, attention_slicing)

    def enable_speed_options(self, compile: bool = False, channels_last: bool = False) -> None:
        """``compile``: torch.compile the UNet's repeated blocks (else the UNet); ``channels_last`` memory layout."""
        pipeline_options.enable_speed_options(self, compile=compile, channels_last=channels_last)

    def apply_options(self, options: RuntimeOptions) -> None:
        """Adapters, speed and memory options of ``options`` (what ``--lora``, ``--low-memory``... ask for)."""
        pipeline_options.apply_options(self, options)

    def config_for(self, **overrides: Any) -> EditConfig:
        """The settings of an edit: the paper's defaults < the model's settings < ``overrides`` (``None``: unset).

        Example:
            >>> pipe.config_for(num_inference_steps=50).text_guidance_scale  # the model's, or the paper's 7.5
        """
        return merge_settings(self.settings, overrides)

    # -- building blocks -------------------------------------------------------------------------------------
    @property
    def size_multiple(self) -> int:
        return self.components.size_multiple

    def scheduler(self, name: str | None):
        """The model's own scheduler (``None``) or one of ``ip2p.sampling.SCHEDULERS`` on its noise schedule."""
        if name is None:
            return self.components.scheduler
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self.components.scheduler)
        return self._schedulers[name]

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B,) texts -> (B, T, D) last hidden states of the text encoder, truncated to its limit with a warning."""
        tokenizer = self.components.tokenizer
        with _TOKENIZER_LOCK:
            lengths = [len(tokenizer(text, truncation=False)["input_ids"]) for text in texts]
        for text, n in zip(texts, lengths, strict=True):
            if n > tokenizer.model_max_length:
                warnings.warn(
                    f"the instruction has {n} tokens; the text encoder reads {tokenizer.model_max_length}, "
                    f"so it was truncated: {text[:60]!r}...",
                    stacklevel=3,
                )
        return encode_prompts(  # (B, T, D)
            tokenizer, self.components.text_encoder, texts, self.device, lock=_TOKENIZER_LOCK
        )

    @torch.inference_mode()
    def encode_text_sdxl(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: (B,) texts -> (B, T, D1 + D2) penultimate hidden states of both text encoders, (B, P) pooled."""
        c = self.components
        return encode_prompts_sdxl(
            [c.tokenizer, c.tokenizer_2],
            [c.text_encoder, c.text_encoder_2],
            texts,
            self.device,
            lock=_TOKENIZER_LOCK,
        )

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/f, W/f) VAE posterior mode, *unscaled* (what the released weights
        were trained with: the original feeds ``encode_first_stage(x).mode()`` without ``scale_factor``)."""
        vae = self.components.vae
        return vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) scaled latents -> (B, 3, H, W) images in about [-1, 1]."""
        vae = self.components.vae
        # the sampler's arithmetic may run in fp32 (Euler upcasts), the VAE need not
        latents = latents.to(vae.dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:  # normalised latents (as diffusers' SDXL pipelines decode)
            mean = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            std = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
            return vae.decode(latents * std / vae.config.scaling_factor + mean, return_dict=False)[0]
        return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]

    def prepare(self, image: Image.Image | str, config: EditConfig) -> Prepared:
        """Load (if a path) and resize the input per ``config``'s resolution and resize mode. A decoded PIL image
        (e.g. from :func:`ip2p.imaging.load_image`) is not decoded again: ``load_image`` only converts it to RGB."""
        return prepare_image(
            load_image(image),
            resolution=config.resolution,
            mode=config.resize_mode,
            multiple=self.size_multiple,
            exact_multiple=self.components.vae_scale_factor,
        )

    # -- the edit --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def __call__(
        self,
        image: Image.Image | str,
        instruction: str,
        config: EditConfig | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        mask: MaskLike | None = None,
        **overrides: Any,
    ) -> EditResult:
        """Edit ``image`` following ``instruction``; with a ``mask`` (or ``auto_mask=True``) only inside it.

        Args:
            image: a PIL image or a path.
            instruction: the edit, e.g. "make the circle green". An empty instruction returns the (resized) input
                unchanged, as the original does.
            config: settings (``EditConfig``); without it, :meth:`config_for` (the model's settings). Keyword
                ``overrides`` replace single fields.
            seed: makes the result reproducible; drawn at random (and recorded) when neither it nor ``generator``
                is given.
            generator: a torch generator to draw the noise from (instead of ``seed``).
            callback: ``callback(step, num_steps, latents)`` after every sampler step.
            mask: where the edit may act (white, or 1): a file, an image, or a (H, W) array or tensor, resized to
                the input if its size differs (:func:`ip2p.masking.load_mask`). Outside it the result keeps the
                input's pixels exactly (blended latent diffusion: :mod:`ip2p.masking`). Without it,
                ``auto_mask=True`` estimates one from the editor (DiffEdit); ``result.mask`` is the mask used.

        Example:
            >>> result = pipe(image, "make the circle green", mask="circle-mask.png", seed=0)
            >>> result = pipe(image, "make the circle green", auto_mask=True, seed=0); result.mask.save("m.png")
        """
        config = self._config(config, overrides)
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a string, got {type(instruction).__name__}")
        original = load_image(image)
        prepared = self.prepare(original, config)
        # A copy per call: `set_timesteps` mutates a scheduler, and the web app runs edits concurrently.
        scheduler = copy.deepcopy(self.scheduler(config.scheduler))
        info = {"scheduler": type(scheduler).__name__, "device": str(self.device), "dtype": str(self.dtype)}

        if not instruction.strip():
            images = [restore_image(prepared.image, prepared, config.restore_size)] * config.num_images
            return EditResult(
                images,
                prepared.image,
                seed,
                instruction,
                config,
                self.components.name,
                {**info, "note": "empty instruction: input returned unchanged"},
            )
        if generator is None:
            seed = random.randrange(2**32) if seed is None else int(seed)
            generator = torch.Generator("cpu").manual_seed(seed)

        masks = self._edit_masks([prepared], [instruction], [mask], config, [generator], info)  # (1, H, W)
        latents = self._sample([prepared.image], [instruction], config, scheduler, generator, callback, masks)
        pixels = self.decode(latents)
        images = [restore_image(im, prepared, config.restore_size) for im in tensor_to_pil(pixels)]
        used = None
        if masks is not None:
            images, used = masking.paste_back_results(
                images, prepared, original, masks[0].numpy(), mask, config
            )
        return EditResult(
            images, prepared.image, seed, instruction, config, self.components.name, info, latents, used
        )

    @torch.inference_mode()
    def edit_batch(
        self,
        images: list[Image.Image],
        instructions: list[str],
        seeds: list[int],
        config: EditConfig | None = None,
        masks: list[MaskLike | None] | None = None,
        **overrides: Any,
    ) -> list[Image.Image]:
        """Edit several inputs in one batch: image i by instruction i from seed i (inside ``masks[i]`` where given,
        or its automatic mask with ``auto_mask=True``); one result each.

        Each result equals ``self(images[i], instructions[i], config, seed=seeds[i]).images[0]`` up to float
        rounding (every input draws its initial and per-step noise from its own generator). The inputs must
        prepare to one size (same aspect ratio); ``num_images`` must be 1.
        """
        config = self._config(config, overrides)
        if not (len(images) == len(instructions) == len(seeds)):
            raise ValueError(
                f"need one instruction and seed per image: {len(images)}, {len(instructions)}, {len(seeds)}"
            )
        if config.num_images != 1:
            raise ValueError("edit_batch makes one image per input; call the pipeline for num_images > 1")
        if not images:
            return []
        prepared = [self.prepare(image, config) for image in images]
        sizes = {p.image.size for p in prepared}
        if len(sizes) > 1:
            raise ValueError(f"edit_batch needs inputs of one prepared size, got {sorted(sizes)}")
        masks = list(masks) if masks is not None else [None] * len(images)
        if len(masks) != len(images):
            raise ValueError(f"need one mask (or None) per image: {len(images)} images, {len(masks)} masks")
        out: list[Image.Image | None] = [None] * len(images)
        todo = [i for i, text in enumerate(instructions) if text.strip()]
        for i in set(range(len(images))) - set(todo):  # empty instruction: the input, as __call__
            out[i] = restore_image(prepared[i].image, prepared[i], config.restore_size)
        if todo:
            scheduler = copy.deepcopy(self.scheduler(config.scheduler))
            generators = [torch.Generator("cpu").manual_seed(int(seeds[i])) for i in todo]
            inputs, texts = [prepared[i].image for i in todo], [instructions[i] for i in todo]
            edit_masks = self._edit_masks(
                [prepared[i] for i in todo], texts, [masks[i] for i in todo], config, generators, {}
            )  # (len(todo), H, W) or None
            latents = self._sample(inputs, texts, config, scheduler, generators, None, edit_masks)
            for j, (i, im) in enumerate(zip(todo, tensor_to_pil(self.decode(latents)), strict=True)):
                out[i] = restore_image(im, prepared[i], config.restore_size)
                if edit_masks is not None:
                    original = load_image(images[i])
                    pasted, _ = masking.paste_back_results(
                        [out[i]], prepared[i], original, edit_masks[j].numpy(), masks[i], config
                    )
                    out[i] = pasted[0]
        return out  # type: ignore[return-value]

    def _config(self, config: EditConfig | None, overrides: dict[str, Any]) -> EditConfig:
        if config is None:
            config = self.config_for(**overrides)
        else:
            config = EditConfig(**{**asdict(config), **overrides})
        config.validate()
        return config

    def _conditions(self, images, instructions, config, k: int):
        """The text, null text, SDXL's added conditioning per branch and the image latents of B inputs, each
        repeated k times (n = B * k rows), and the inputs' own (B, 4, h, w) latents as the VAE encodes them."""
        added: dict[str, torch.Tensor] = {}  # SDXL's added conditioning per branch: pooled text, size ids
        if self.components.is_sdxl:
            width, height = images[0].size
            text, null, added = self._sdxl_conditioning(
                list(instructions), replace(config, num_images=k), (height, width)
            )
        else:
            text = self.encode_text(list(instructions)).repeat_interleave(k, dim=0)  # (n, T, D)
            null = self.encode_text([config.negative_prompt or ""]).expand(len(text), -1, -1)  # (n, T, D)
        encoded = self.encode_image(pil_to_tensor(list(images)))  # (B, 4, h, w)
        image_latents = encoded.to(self.dtype).repeat_interleave(k, dim=0)  # (n, 4, h, w)
        if self.components.info.get("is_cosxl_edit", False):  # CosXL Edit takes the image latents scaled
            image_latents = image_latents * self.components.vae.config.scaling_factor
        return text, null, added, image_latents, encoded

    def _sampler_latents(self, encoded: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) VAE latents -> the sampler's clean latents (the inverse of :meth:`decode`'s scaling)."""
        vae = self.components.vae
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean, device=encoded.device, dtype=encoded.dtype).view(1, -1, 1, 1)
            std = torch.tensor(std, device=encoded.device, dtype=encoded.dtype).view(1, -1, 1, 1)
            return ((encoded - mean) * vae.config.scaling_factor / std).to(self.dtype)
        return (encoded * vae.config.scaling_factor).to(self.dtype)

    def _sample(
        self, images, instructions, config, scheduler, generator, callback, masks=None
    ) -> torch.Tensor:
        # B inputs of one size, each edited config.num_images times: n = B * num_images rows.
        k = config.num_images
        text, null, added, image_latents, encoded = self._conditions(images, instructions, config, k)
        text_scale, image_scale = config.text_guidance_scale, config.image_guidance_scale
        rescale = config.guidance_rescale

        noise = randn_tensor(image_latents.shape, generator=generator, device=self.device, dtype=self.dtype)

        if text_scale == 1.0 and image_scale == 1.0:
            # Both scales 1: the guided prediction is the conditional one; one branch instead of three.
            cond = {name: value[0] for name, value in added.items()} or None  # the (text, image) branch's

            def model_fn(scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                x = torch.cat([scaled, image_latents], dim=1)  # (n, 8, h, w)
                return self.components.unet(
                    x, t, encoder_hidden_states=text, added_cond_kwargs=cond, return_dict=False
                )[0]
        else:
            # Branch order as the original and diffusers: (text, image), (null text, image), (null text, no image).
            embeds = torch.cat([text, null, null])  # (3n, T, D)
            cond_image = torch.cat(
                [image_latents, image_latents, torch.zeros_like(image_latents)]
            )  # (3n, 4, h, w)
            cond = {name: torch.cat(value) for name, value in added.items()} or None  # (3n, P), (3n, 6)

            def model_fn(scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                x = torch.cat([torch.cat([scaled] * 3), cond_image], dim=1)  # (3n, 8, h, w)
                eps = self.components.unet(
                    x, t, encoder_hidden_states=embeds, added_cond_kwargs=cond, return_dict=False
                )[0]
                eps_text_image, eps_image, eps_uncond = eps.chunk(3)  # 3 x (n, 4, h, w)
                guided = dual_guidance(eps_text_image, eps_image, eps_uncond, text_scale, image_scale)
                if rescale > 0:
                    guided = rescale_noise_cfg(guided, eps_text_image, rescale)
                return guided

        post_step = None
        if masks is not None:
            # blended latent diffusion: outside the mask, the input's latents noised to the sampler's level
            factor = self.components.vae_scale_factor
            keep = masking.latent_mask(masks.to(self.device), factor)  # (B, 1, h, w)
            keep = keep.repeat_interleave(k, dim=0)  # (n, 1, h, w)
            x0 = self._sampler_latents(encoded).repeat_interleave(k, dim=0)  # (n, 4, h, w)

            def post_step(latents: torch.Tensor, t_next: torch.Tensor | None) -> torch.Tensor:
                if t_next is None:  # after the last step the latents are clean
                    return masking.blend_latents(latents, keep, x0)
                level = t_next.reshape(1).expand(len(x0))
                return masking.blend_latents(latents, keep, scheduler.add_noise(x0, noise, level))

        return denoise(
            model_fn,
            noise,
            scheduler,
            config.num_inference_steps,
            generator=generator,
            eta=config.eta,
            callback=callback,
            post_step=post_step,
        )

    # -- masks (ip2p.masking) --------------------------------------------------------------------------------
    def _edit_masks(self, prepared, instructions, masks, config, generators, info) -> torch.Tensor | None:
        """(B, H, W) 0/1 masks at the prepared size: each input's given mask, else (``auto_mask``) its estimate;
        None where no input has either. ``info`` gets a note of which."""
        if not config.auto_mask and all(m is None for m in masks):
            return None
        width, height = prepared[0].image.size
        out = torch.ones(len(prepared), height, width)
        for i, (p, m) in enumerate(zip(prepared, masks, strict=True)):
            if m is not None:
                out[i] = torch.from_numpy(masking.fit_mask(m, p, lambda im: self.prepare(im, config)))
        todo = [i for i, m in enumerate(masks) if m is None] if config.auto_mask else []
        if todo:
            out[todo] = self.estimate_masks(
                [prepared[i].image for i in todo],
                [instructions[i] for i in todo],
                config,
                [generators[i] for i in todo],
            )
            info["mask"] = (
                f"auto (threshold {config.mask_threshold:g}, {2 * masking.MASK_DRAWS} UNet evaluations)"
            )
        else:
            info["mask"] = "given"
        return out

    @torch.inference_mode()
    def estimate_masks(
        self,
        images: list[Image.Image],
        instructions: list[str],
        config: EditConfig,
        generators: list[torch.Generator],
    ) -> torch.Tensor:
        """DiffEdit's masks of prepared inputs (:func:`ip2p.masking.diffedit_mask`): (B, H, W) 0/1, 1 where the
        instruction acts, at ``config.mask_threshold``. The noise draws come from a generator seeded with each
        ``generators[i]``'s seed, so that the edit's own noise is the same with and without the mask."""
        schedule = getattr(self.components.scheduler, "alphas_cumprod", None)
        if schedule is None:
            raise ValueError("automatic masks need a model trained on a DDPM noise schedule (alphas_cumprod)")
        text, null, added, image_latents, encoded = self._conditions(images, instructions, config, 1)
        d = masking.MASK_DRAWS
        embeds = torch.cat([text.repeat_interleave(d, 0), null.repeat_interleave(d, 0)])  # (2BD, T, D)
        cond_image = image_latents.repeat_interleave(d, 0).repeat(2, 1, 1, 1)  # (2BD, 4, h, w)
        cond = {
            n: torch.cat([v[0].repeat_interleave(d, 0), v[1].repeat_interleave(d, 0)])
            for n, v in added.items()
        }

        def predict(xt: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.cat([torch.cat([xt, xt]), cond_image], dim=1)  # (2BD, 8, h, w)
            out = self.components.unet(
                x, t, encoder_hidden_states=embeds, added_cond_kwargs=cond or None, return_dict=False
            )[0]
            return out.chunk(2)  # with, without the instruction: 2 x (BD, 4, h, w)

        seeded = [torch.Generator("cpu").manual_seed(g.initial_seed()) for g in generators]
        mask, _ = masking.diffedit_mask(
            predict,
            self._sampler_latents(encoded),
            schedule.to(self.device),
            seeded,
            draws=d,
            threshold=config.mask_threshold,
        )  # (B, h, w)
        return masking.upsample_mask(mask, self.components.vae_scale_factor).cpu()

    def _sdxl_conditioning(
        self, instructions: list[str], config: EditConfig, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, ...]]]:
        """SDXL's text and null embeddings (n, T, D) and, per branch (text, null, null), its added conditioning:
        ``text_embeds`` (n, P) pooled text and ``time_ids`` (n, 6), as diffusers' SDXL InstructPix2Pix pipeline.

        The null text is zeros (embeddings and pooled) where the model sets ``force_zeros_for_empty_prompt`` and no
        negative prompt is given, else the encoded negative prompt (or ""). The size ids are (original size, crop
        top-left, target size) = ((h, w), (0, 0), (h, w)) of the image the model edits.
        """
        k = config.num_images
        text, pooled = self.encode_text_sdxl(instructions)  # (B, T, D), (B, P)
        text = text.repeat_interleave(k, dim=0)  # (n, T, D)
        pooled = pooled.repeat_interleave(k, dim=0)  # (n, P)
        n = len(text)
        if config.negative_prompt is None and self.components.info.get("force_zeros_for_empty_prompt", True):
            null, null_pooled = torch.zeros_like(text), torch.zeros_like(pooled)
        else:
            null, null_pooled = self.encode_text_sdxl([config.negative_prompt or ""])
            null, null_pooled = null.expand(n, -1, -1), null_pooled.expand(n, -1)
        height, width = size
        time_ids = [height, width, 0, 0, height, width]
        unet = self.components.unet
        expected = unet.add_embedding.linear_1.in_features
        if unet.config.addition_time_embed_dim * len(time_ids) + pooled.shape[-1] != expected:
            raise ValueError(
                f"the UNet's added embedding takes {expected} features, but {len(time_ids)} size ids x "
                f"{unet.config.addition_time_embed_dim} + pooled text {pooled.shape[-1]} were given: the UNet and "
                "the second text encoder do not belong together"
            )
        ids = torch.tensor([time_ids], dtype=text.dtype, device=self.device).expand(n, -1)  # (n, 6)
        added = {"text_embeds": (pooled, null_pooled, null_pooled), "time_ids": (ids, ids, ids)}
        return text, null, added
