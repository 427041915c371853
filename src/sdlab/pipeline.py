"""The public Python API: load a model, generate txt2img / img2img with our own loop.

    from sdlab import Pipeline, GenerationConfig
    pipe = Pipeline.load()                     # the shipped shapes-world model
    result = pipe.generate(GenerationConfig("a large red circle on a blue background", seed=1))
    result.images[0].save("out.png")
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from .callbacks import CancelToken, StepCallback
from .config import HIRES_FIELDS, GenerationConfig
from .errors import ConfigError
from .guidance.cfg import CFGDenoiser, GuidanceCond, ScheduledCond, map_cond
from .io.images import to_pil
from .io.metadata import format_infotext, hashes_field, sampler_fields
from .models.shipped import SHIPPED
from .sampling import Denoiser, NoiseSchedule, get_sigmas, img2img_start, resolve_sampler
from .sampling.denoiser import consistency_denoiser
from .sampling.noise import batch_noise
from .text.chunks import encode_weighted_batch, pad_tokens
from .text.extra_networks import with_lora_tags

DEFAULT_MODEL = SHIPPED["shapes-sd"]

# A guidance wrapper factory: takes the (CFG) denoiser and the pipeline, returns a denoiser
# with the same signature `model(x, sigma, cond) -> x0` (see sdlab.guidance).
GuidanceWrapper = Callable[..., Callable[..., torch.Tensor]]


@dataclass
class GenerationResult:
    """Images of one generate() call, with the seed, infotext and settings of each."""

    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    settings: list[dict] = field(default_factory=list)


class Pipeline:
    """A loaded model plus the explicit sampling loop of sdlab.sampling."""

    def __init__(self, components):
        self.c = components
        self.schedule = NoiseSchedule.from_config(components.scheduler_config)
        self.denoiser = Denoiser(components.unet, self.schedule)
        self.vae_scale = 2 ** (len(components.vae.config.block_out_channels) - 1)
        self.loras: list[dict] = []          # applied LoRA files: name, hash, scale (sdlab.models.lora)
        self.embeddings: list[dict] = []     # added embeddings: name, hash, vectors (sdlab.text.embeddings)
        self.lora_dirs: list[Path] = []      # where <lora:NAME:W> prompt tags find NAME.safetensors
        self.speed = None                    # the SpeedOptions applied, if any
        self._own_vae = (components.vae, components.extra.get("vae"))   # what set_vae(None) returns to
        self._vaes: dict[str, tuple] = {}    # VAEs set_vae loaded, by path and mtime (the last two)
        self._controlnets: dict[str, tuple] = {}   # ControlNets load_controlnet loaded, by path and mtime
        self._controls: list = []            # the Controls of the generate() call running (sdlab.control)

    @classmethod
    def load(cls, model: str | Path | None = None, *, dtype: str | None = None, device: str | None = None,
             speed=None, vae: str | Path | None = None):
        """Load a diffusers folder or a single-file checkpoint (default: the shipped model);
        `speed`: a sdlab.models.speed.SpeedOptions (fast path, low memory); `vae`: a VAE folder
        or file to use instead of the model's own."""
        from .models.loader import load_pipeline_components

        pipe = cls(load_pipeline_components(model or DEFAULT_MODEL, dtype=dtype, device=device, vae=vae))
        if speed is not None:
            pipe.apply_speed(speed)
        return pipe

    def apply_speed(self, options) -> None:
        """Switch on fast-path / low-memory options (sdlab.models.speed) in place."""
        from .models.speed import apply_speed_options

        apply_speed_options(self.c, options)
        self.denoiser = Denoiser(self.c.unet, self.schedule)
        self.speed = options

    def set_vae(self, vae: str | Path | None) -> None:
        """Encode and decode through `vae` (a folder or file, as `load(vae=...)` takes) from now
        on; None returns to the VAE the pipeline was loaded with. AUTOMATIC1111's "SD VAE"
        setting: the two VAEs used last stay loaded, so switching back costs nothing."""
        from .models.speed import apply_vae_speed_options
        from .models.vae_file import load_vae

        if vae is None:
            self.c.vae, self.c.extra["vae"] = self._own_vae
            return
        if self.speed is not None and self.speed.cpu_offload != "none":
            raise ConfigError("a pipeline with CPU offload cannot switch its VAE: load it with vae= instead")
        path = Path(vae).expanduser().resolve()
        key = f"{path}@{path.stat().st_mtime_ns}" if path.exists() else str(path)   # a rewritten file reloads
        if key not in self._vaes:
            module, record = load_vae(vae, self._own_vae[0], self.c.dtype)
            module.to(self.c.device).eval()
            if self.speed is not None:
                apply_vae_speed_options(module, self.speed)
            self._vaes = {**dict(list(self._vaes.items())[-1:]), key: (module, record)}
        self.c.vae, self.c.extra["vae"] = self._vaes[key]

    def load_lora(self, path: str | Path, scale: float = 1.0):
        """Merge a LoRA file (diffusers or kohya layout, sdlab.models.lora) into the weights at
        `scale` (in [-10, 10]); returns a handle whose `remove()` takes it out again. Recorded in
        `self.loras` (metadata, infotext "Lora hashes") while applied."""
        from .models.lora import apply_lora

        return apply_lora(self, path, scale)

    def load_controlnet(self, path: str | Path):
        """(ControlNetModel, name, short hash or None) of a diffusers folder, or a diffusers- or
        ldm-layout file (sdlab.control.loading), for this model's UNet, on its device and in its
        dtype; loaded once per path and mtime."""
        from .control.loading import load_controlnet
        from .control.spec import model_name
        from .models.hashing import short_hash

        p = Path(path).expanduser().resolve()
        key = f"{p}@{p.stat().st_mtime_ns}" if p.exists() else str(p)
        if key not in self._controlnets:
            net = load_controlnet(p, self.c.unet, self.c.dtype).to(self.device)
            weights = p if p.is_file() else next(iter(sorted(p.glob("**/*.safetensors"))), None)
            self._controlnets[key] = (net, model_name(p), short_hash(weights) if weights else None)
        return self._controlnets[key]

    @contextlib.contextmanager
    def using_controls(self, controls: Sequence = ()):
        """ControlNet units (sdlab.control.Control) applied to every sample_latents call inside the
        block, with their infotext and settings; models given as paths are loaded (load_controlnet)."""
        from .control.spec import Control, LoadedControl, check_fits

        loaded = []
        for c in controls:
            if not isinstance(c, Control):
                raise ConfigError(f"controls must be sdlab.control.Control units, got {type(c).__name__}")
            if isinstance(c.model, (str, Path)):
                net, name, digest = self.load_controlnet(c.model)
                loaded.append(LoadedControl(c, net, name=name, hash=digest))
            else:
                loaded.append(LoadedControl(c, c.model.to(self.device), name=c.model.__class__.__name__))
            check_fits(loaded[-1].net, loaded[-1].name, self.vae_scale)
        before, self._controls = self._controls, loaded
        try:
            yield loaded
        finally:
            self._controls = before

    def _controlled(self, base, shape, total: int, callback):
        """`base` with the active controls' ControlNets at this latent shape, and `callback` with their
        step counter; both unchanged without controls."""
        if not self._controls:
            return base, callback
        from .callbacks import combine
        from .control.unet import controlled_denoiser

        h, w = shape[1] * self.vae_scale, shape[2] * self.vae_scale
        units = [dataclasses.replace(lc, image=lc.control.condition(w, h)) for lc in self._controls]
        model, unet = controlled_denoiser(base, units, total)
        return model, combine([unet.on_step, callback])

    def load_embedding(self, path: str | Path, token: str | None = None, *, replace: bool = False) -> list[str]:
        """Add a textual-inversion embedding file (diffusers learned_embeds, A1111 .pt/.safetensors;
        sdlab.text.embeddings); returns its prompt token(s). `token` renames a one-embedding file;
        `replace` overwrites the vectors of a token an earlier file added."""
        from .text.embeddings import load_embedding

        return load_embedding(self, path, token=token, replace=replace)

    @property
    def native_size(self) -> int:
        return self.c.unet.config.sample_size * self.vae_scale

    @property
    def device(self) -> torch.device:
        return self.c.device

    # --- the pieces of the loop -------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        tok = self.c.tokenizer
        return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
        """CLIP last hidden states (B, 77 * chunks, dim), as SD conditions on them, with the
        AUTOMATIC1111 prompt syntax: (word:1.3) weights, BREAK, prompts past 75 tokens;
        `clip_skip` N > 1: the N-th layer from the end (A1111's CLIP skip)."""
        from .text.embeddings import expand_prompt
        from .text.extra_networks import strip_lora_tags

        prompts = [expand_prompt(strip_lora_tags(p), self.c.tokenizer) for p in prompts]  # multi-vector embeddings
        return encode_weighted_batch(self.c.text_encoder, self.c.tokenizer, prompts, clip_skip=clip_skip)

    def encode_scheduled(self, prompt: str, steps: int, hires_steps: Optional[int] = None,
                         clip_skip: int = 1) -> torch.Tensor | ScheduledCond:
        """`encode_prompt` of one prompt with A1111 prompt editing `[from:to:when]` and alternation
        `[a|b]` over `steps` sampler steps (sdlab.text.prompt_schedule; `hires_steps`: a hires fix's
        second pass): (1, tokens, dim) when the text never changes, else a ScheduledCond."""
        from .text.prompt_schedule import encode_schedule

        schedule = encode_schedule(lambda text: self.encode_prompt([text], clip_skip), prompt, steps, hires_steps)
        if len(schedule) == 1:
            return schedule[0][1]
        conds = _same_length(*[c for _, c in schedule], empty=lambda: self.encode_prompt([""], clip_skip))
        return ScheduledCond(tuple(end for end, _ in schedule), tuple(conds))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] through the VAE decoder; NaN/inf never come out (a decoder
        that overflows in fp16/bf16 runs again in fp32, see sdlab.models.precision)."""
        from .models.precision import decode_finite

        return decode_finite(self.decode_differentiable, self.c.vae, latents, self.nonfinite_hint())

    def nonfinite_hint(self) -> str:
        """What to check when sampling gives NaN/inf: the LoRAs and embeddings in use, the precision."""
        suspects = [f"LoRA '{r['name']}'" for r in self.loras] + [f"embedding '{r['name']}'" for r in self.embeddings]
        hint = f"check the weights of {', '.join(suspects)}" if suspects else "check the LoRA/embedding/model weights"
        return hint if self.c.dtype == torch.float32 else f"{hint} or use --dtype fp32"

    def decode_differentiable(self, latents: torch.Tensor) -> torch.Tensor:
        """`decode` with autograd left on, for losses on the decoded image (loss guidance)."""
        vae = self.c.vae
        return vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float()

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (posterior mode)."""
        vae = self.c.vae
        return vae.encode(images.to(self.device, vae.dtype)).latent_dist.mode().float() * vae.config.scaling_factor

    def size(self, config: GenerationConfig) -> tuple[int, int]:
        """(width, height) of `config`'s images: its own, or the model's native size."""
        return config.width or self.native_size, config.height or self.native_size

    _size = size      # the former private name

    @staticmethod
    def to_images(pixels: torch.Tensor) -> list[Image.Image]:
        """Decoded images in [-1, 1], (B, 3, H, W), as PIL images (NaN/inf refused)."""
        return to_pil(pixels)

    def decode_images(self, latents: torch.Tensor) -> list[Image.Image]:
        """Clean latents (B, C, h, w), e.g. from `sample_latents` or a step's predicted x0, as PIL images."""
        return to_pil(self.decode(latents.to(self.device)))

    def sample_images(self, config: GenerationConfig, seeds: Sequence[int], **loop) -> list[Image.Image]:
        """One batch of images at `config`'s size, image i from the noise of seeds[i] (seeds may
        repeat): `sample_latents` then `decode_images`. `loop`: sample_latents' keywords (cond,
        uncond, noise, guidance, attention, callback, cancel). Prompt `<lora:...>` tags are not
        applied here: wrap the call in `prompt_loras(...)`, as `generate` does."""
        return self.decode_images(self.sample_latents(config, list(seeds), *self.size(config), **loop))

    @property
    def generation_defaults(self) -> dict:
        """The settings this model recommends (sdlab.models.generation_defaults) over Stable Diffusion's."""
        from .models.generation_defaults import settings_of

        return settings_of(self.c)

    def cfg_scale_for(self, scale: Optional[float]) -> float:
        """`scale`, or the model's recommended one when it is None (the user gave none)."""
        return self.generation_defaults["cfg_scale"] if scale is None else scale

    def resolved(self, config: GenerationConfig) -> GenerationConfig:
        """`config` with the settings it leaves to the model (cfg_scale None) set to the model's."""
        if config.cfg_scale is None:
            return dataclasses.replace(config, cfg_scale=self.cfg_scale_for(None))
        return config

    # --- generation -------------------------------------------------------------------------
    def generate(self, config: GenerationConfig, *, init_image: Optional[Image.Image] = None,
                 callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                 guidance: Sequence[GuidanceWrapper] = (), attention=None,
                 cond: Optional[torch.Tensor] = None, controls: Sequence = ()) -> GenerationResult:
        """txt2img, or img2img from `init_image` with `config.strength`: batch_count batches of
        batch_size images; image i uses seed config.seed + i for all of its noise.

        `guidance`: wrappers applied on top of classifier-free guidance, innermost first
        (loss or classifier guidance). `attention`: a controller for sdlab.attention, installed
        on the UNet for the loop. `cond`: prompt embeddings to use instead of encoding
        `config.prompt` (embedding mixing, interpolation), (1 or batch_size, tokens, dim).
        `controls`: ControlNet units (sdlab.control.Control), applied in every step's UNet call."""
        if not isinstance(config, GenerationConfig):
            raise ConfigError(f"config must be a GenerationConfig, got {type(config).__name__}")
        config = self.resolved(config)
        from .sampling import hires

        width, height = self.size(config)
        hires.check_hires(config, img2img=init_image is not None)
        if hires.enabled(config):
            hires.hires_size(config, width, height)         # a size past the limit fails before sampling
        init = None
        if init_image is not None:
            init = self._init_latent(init_image, width, height)
        result = GenerationResult([], [], [], [])
        with self.prompt_loras(config.prompt), self.using_controls(controls):
            for b in range(config.batch_count):
                seeds = [config.seed + b * config.batch_size + i for i in range(config.batch_size)]
                loop = dict(callback=callback, cancel=cancel, guidance=guidance, attention=attention)
                latents = self.sample_latents(config, seeds, width, height, init=init, cond=cond, **loop)
                if hires.enabled(config):
                    latents = hires.hires_pass(self, config, seeds, latents, width, height, cond=cond, **loop)
                images = hires.decode(self, latents)
                for seed, image in zip(seeds, images):
                    settings = self.settings_for(config, seed, width, height, img2img=init is not None)
                    result.images.append(image)
                    result.seeds.append(seed)
                    result.settings.append(settings)
                    result.infotexts.append(self.infotext(config, seed, width, height, img2img=init is not None))
        return result

    @contextlib.contextmanager
    def prompt_loras(self, *prompts: str):
        """The prompts' `<lora:NAME:W>` tags applied from `lora_dirs` while sampling, then taken out."""
        from .text.extra_networks import find_lora, tags_of_prompts

        handles = []
        try:
            for name, weight in tags_of_prompts(prompts):
                handles.append(self.load_lora(find_lora(name, self.lora_dirs), weight))
            yield
        finally:
            for handle in reversed(handles):
                handle.remove()

    def sample_latents(self, config: GenerationConfig, seeds: list[int], width: int, height: int, *,
                       init: Optional[torch.Tensor] = None, callback=None, cancel=None,
                       guidance: Sequence[GuidanceWrapper] = (), attention=None,
                       cond: Optional[torch.Tensor] = None, uncond: Optional[torch.Tensor] = None,
                       noise: Optional[torch.Tensor] = None, denoiser=None,
                       sigmas: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run the loop for one batch; returns clean latents (B, C, h, w). `cond`/`uncond`
        override the encoded prompt / negative prompt (a tensor or a ScheduledCond); `noise`
        overrides the seeded noise (e.g. one noise shared by every row, as prompt-to-prompt needs);
        `denoiser` the UNet's own (sdlab.sampling.Denoiser), e.g. an inpainting UNet's with its mask
        (sdlab.inpaint); `sigmas` the sigmas to run instead of config.steps' schedule, all of them,
        from `init` noised to sigmas[0] when given (a hires fix's second pass)."""
        config = self.resolved(config)
        spec, sigma_kind = resolve_sampler(config.sampler, config.schedule)
        shape = (self.c.vae.config.latent_channels, height // self.vae_scale, width // self.vae_scale)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        seeded = batch_noise(shape, generators)   # drawn even when overridden: ancestral noise follows it
        noise = (seeded if noise is None else noise).to(self.device)
        strength = config.strength if sigmas is None else 1.0
        if sigmas is None:
            sigmas = get_sigmas(self.schedule, config.steps, sigma_kind)
        sigmas = sigmas.to(self.device, torch.float32)
        if init is None:
            x = noise * sigmas[0]
        else:
            sigmas, x = img2img_start(init.expand(len(seeds), -1, -1, -1), strength, sigmas, noise=noise)
            if len(sigmas) == 1:
                return x
        cond, uncond = self._conds(config, cond, uncond, len(seeds))
        base = denoiser if denoiser is not None else self._unmasked_denoiser(shape)
        base, callback = self._controlled(base, shape, len(sigmas) - 1, callback)
        base, cfg_scale = consistency_denoiser(base, spec.base == "LCM", config.cfg_scale)   # LCM, distilled w
        model = cfg = CFGDenoiser(base, cfg_scale, config.guidance_rescale)
        for wrap in guidance:
            model = wrap(model, self)
        from .callbacks import combine
        from .models.precision import finite_guard

        # NaN/inf stop the loop at once; the CFG wrapper follows the step for prompt editing
        callback = combine([finite_guard(self.nonfinite_hint()), cfg.on_step, callback])
        with self._attention(attention), self._deep_shrink(config.deep_shrink):
            run = spec.bind(self.schedule)          # TCD also needs the schedule's timestep <-> sigma map
            return run(model, x, sigmas, extra_args={"cond": GuidanceCond(cond=cond, uncond=uncond)},
                       callback=callback, cancel=cancel, generator=generators)

    def _deep_shrink(self, factor: float):
        """sdlab.sampling.deep_shrink on the UNet for one loop (refused with ControlNets, whose residuals
        are added at the full size)."""
        from .sampling.deep_shrink import check_controls, deep_shrink

        check_controls(factor, self._controls)
        return deep_shrink(self.c.unet, factor)

    def _conds(self, config: GenerationConfig, cond, uncond, n: int):
        """(cond, uncond) for n images: the overrides or the config's (negative) prompt, encoded with
        its prompt editing over config.steps and its CLIP skip, padded to one length."""
        def get(value, prompt, name):
            if value is None:
                return self.encode_scheduled(prompt, config.steps, clip_skip=config.clip_skip)
            return map_cond(value, lambda t: _as_batch(t, name).to(self.device))

        cond, uncond = get(cond, config.prompt, "cond"), get(uncond, config.negative_prompt, "uncond")
        cond, uncond = _same_length(cond, uncond, empty=lambda: self.encode_prompt([""], config.clip_skip))
        return map_cond(cond, lambda t: _expand(t, n, "cond")), map_cond(uncond, lambda t: _expand(t, n, "uncond"))

    def _unmasked_denoiser(self, shape: tuple[int, int, int]):
        """The UNet's denoiser; an inpainting UNet (9 input channels) gets A1111's conditioning
        for txt2img and img2img: the whole image to repaint, the latents of a grey image."""
        from .sampling.inpaint import ConcatUNet, inpaint_conditioning, is_inpainting_unet

        if not is_inpainting_unet(self.c.unet):
            return self.denoiser
        grey = torch.zeros((1, 3, shape[1] * self.vae_scale, shape[2] * self.vae_scale), device=self.device)
        return Denoiser(ConcatUNet(self.c.unet, inpaint_conditioning(self.encode_image, grey, None, shape[1:])),
                        self.schedule)

    def inpaint(self, config: GenerationConfig, image: Image.Image, mask: Image.Image, options=None,
                **loop) -> GenerationResult:
        """Repaint the white area of `mask` in `image` (AUTOMATIC1111's inpainting; sdlab.inpaint):
        `options` an InpaintConfig (mask blur, masked content, only masked, padding, invert);
        config.strength is the denoising strength. Pixels outside the blurred mask stay the
        source's. `loop`: callback, cancel, guidance, attention."""
        from .inpaint import InpaintConfig, inpaint

        return inpaint(self, config, image, mask, options or InpaintConfig(), **loop)

    def outpaint(self, config: GenerationConfig, image: Image.Image, expand, options=None,
                 **loop) -> GenerationResult:
        """`image` grown by `expand` (an sdlab.inpaint.Expand, or "left=16,top=8") with the new
        border painted; the original area is kept as it is."""
        from .inpaint import Expand, InpaintConfig, outpaint

        expand = Expand.parse(expand) if isinstance(expand, str) else expand
        return outpaint(self, config, image, expand, options or InpaintConfig(), **loop)

    def _attention(self, controller):
        """Install an attention controller on the UNet for one loop (sdlab.attention)."""
        if controller is None:
            return contextlib.nullcontext()
        from .attention import attention_control

        return attention_control(self.c.unet, controller)

    def _init_latent(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        image = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        return self.encode_image(arr)

    # --- metadata ---------------------------------------------------------------------------
    def settings_for(self, config: GenerationConfig, seed: int, width: int, height: int, *,
                     img2img: bool = False) -> dict:
        d = {**self.resolved(config).to_dict(), "seed": seed, "width": width,   # the batch's own seed range holds
             "height": height}
        d.update(mode="img2img" if img2img else "txt2img", model=self.c.name, model_hash=self.c.model_hash,
                 sdlab_version=_version())
        if vae := self.c.extra.get("vae"):
            d["vae"] = dict(vae)
        if self.loras:
            d["loras"] = [dict(r) for r in self.loras]
        if self._controls:
            d["controls"] = [lc.record() for lc in self._controls]
        if used := self.embeddings_used(config):
            d["embeddings"] = used
        if not img2img:
            d.pop("strength")
        for name, default in _QUIET_DEFAULTS.items():     # as A1111 writes them: only when set
            if d.get(name) == default:
                d.pop(name)
        if d.get("hires_scale") is None:
            for name in HIRES_FIELDS:
                d.pop(name, None)
        return d

    def embeddings_used(self, config: GenerationConfig) -> list[dict]:
        """Records of the added embeddings whose token the prompt or negative prompt uses (as A1111 lists them)."""
        text = f"{config.prompt} {config.negative_prompt or ''}"
        return [dict(r) for r in self.embeddings if re.search(rf"(?<!\w){re.escape(r['name'])}(?!\w)", text)]

    def infotext(self, config: GenerationConfig, seed: int, width: int, height: int, *, img2img=False,
                 extra: Optional[dict] = None) -> str:
        from .sampling.hires import infotext_fields as hires_fields

        config = self.resolved(config)
        spec, sigma_kind = resolve_sampler(config.sampler, config.schedule)
        params = {"Steps": config.steps, **sampler_fields(spec.name, sigma_kind, self.schedule.timestep_spacing),
                  "CFG scale": config.cfg_scale, "Seed": seed, "Size": f"{width}x{height}",
                  "Model hash": self.c.model_hash, "Model": self.c.name}
        if img2img:
            params["Denoising strength"] = config.strength
        if config.clip_skip > 1:
            params["Clip skip"] = config.clip_skip
        params.update(hires_fields(config))
        if config.deep_shrink:
            params["Deep Shrink"] = config.deep_shrink
        if config.guidance_rescale:
            params["CFG Rescale phi"] = config.guidance_rescale
        params.update(extra or {})          # e.g. inpainting's Mask blur, Masked content
        if self._controls:
            from .control.spec import infotext_fields

            params.update(infotext_fields(self._controls))
        if vae := self.c.extra.get("vae"):    # A1111 writes these two only for a swapped-in VAE
            params["VAE hash"], params["VAE"] = vae["hash"], vae["name"]
        params["Lora hashes"] = hashes_field(self.loras)     # A1111's keys, which civitai and others read
        params["TI hashes"] = hashes_field(self.embeddings_used(config))
        return format_infotext(with_lora_tags(config.prompt, self.loras), config.negative_prompt, params)


# settings left out of the metadata at these values
_QUIET_DEFAULTS = {"clip_skip": 1, "hires_scale": 1.0, "deep_shrink": 0.0}


def _same_length(*conds, empty: Callable[[], torch.Tensor]) -> list:
    """Tensors or ScheduledConds (B, 77 * n, dim) padded to one token length with chunks of the
    empty prompt (`empty()`, called only when lengths differ), as A1111 pads cond and uncond."""
    tensors = [t for c in conds for t in (c.conds if isinstance(c, ScheduledCond) else (c,))]
    length = max(t.shape[1] for t in tensors)
    if all(t.shape[1] == length for t in tensors):
        return list(conds)
    chunk = empty()
    return [map_cond(c, lambda t: pad_tokens(t, length, chunk)) for c in conds]


def _as_batch(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim not in (2, 3):
        raise ConfigError(f"{name} must be a tensor of prompt embeddings (tokens, dim) or (batch, tokens, dim), "
                          f"got {getattr(t, 'shape', type(t).__name__)}")
    return t[None] if t.ndim == 2 else t


def _expand(t: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if t.shape[0] not in (1, n):
        raise ConfigError(f"{name} has {t.shape[0]} rows; it needs 1 or one per image ({n})")
    return t.expand(n, -1, -1)


_to_pil = to_pil      # the former private name (sdlab.io.images.to_pil)


def _version() -> str:
    from . import __version__

    return __version__
