"""What a personalization method tells the shared loop, and the denoising loss they share.

A method says which parameters train (`trainable_modules`, `parameters`), what the loss of
a batch is (`loss`), what a checkpoint holds (`state_dict` / `load_state_dict`) and what it
finally writes (`save`). The loss is the LDM objective (Rombach et al. 2022): noise the VAE
latents at a random timestep and regress the UNet's prediction (epsilon or v) on the target.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ...errors import ConfigError


@dataclass
class Batch:
    """One process's micro-batch: images in [-1, 1], captions, and a seed per sample
    (noise, timestep, template choice) that depends only on the sample's global position."""

    pixels: torch.Tensor
    texts: list[str]
    seeds: list[int]
    positions: list[int]
    latents: torch.Tensor | None = None      # the pixels' VAE latents, when cached (--cache-latents)


@runtime_checkable
class Method(Protocol):
    """Every member the loop, the memory planner and the model card use (DiffusionMethod gives
    each a default). A method is built as `cls(options)`; its MethodSpec (registry.py) holds
    what is not training: recipe, CLI flags, result use, card line, memory estimate."""

    name: str                       # its registry name; checkpoints record it
    options: object                 # its frozen options dataclass
    uses_captions: bool             # False: any image folder will do (metadata.jsonl read when present)
    train_unet: bool                # the whole UNet trains (the planner suggests lighter methods)
    c: object                       # the model's components, after setup
    step: int                       # the loop's step, set before `save`

    def setup(self, components, config, accelerator) -> None: ...
    def trainable_modules(self) -> list[torch.nn.Module]: ...
    def set_prepared(self, modules: list[torch.nn.Module]) -> None: ...
    def parameters(self) -> list[torch.nn.Parameter]: ...
    def param_groups(self, lr: float) -> list[dict]: ...
    def latents(self, pixels: torch.Tensor) -> torch.Tensor: ...
    def loss(self, batch: Batch) -> torch.Tensor: ...
    def validation_loss(self, pixels: torch.Tensor, text: str, seed: int) -> float: ...
    def after_step(self) -> None: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...
    def save(self, output_dir: Path) -> list[Path]: ...


class DiffusionMethod:
    """Shared plumbing: frozen modules, text encoding, the noised-latent loss."""

    name = "base"
    options = None
    uses_captions = True
    c = None                        # the model's components, once set up
    step = 0
    train_unet = False
    train_text_encoder = False
    train_vae_decoder = False
    unet_adapters = False           # adapters on the UNet train (the UNet is prepared, its base frozen)
    text_adapters = False           # ... on the text encoder
    # Adapter methods (LoRA) keep their frozen base weights at the mixed-precision dtype, as
    # diffusers' LoRA scripts do: an fp32 base would cost 4 bytes a weight plus the
    # low-precision copy autocast saves for backward.
    adapters_on_cast_base = False

    def setup(self, components, config, accelerator) -> None:
        from ...sampling.schedule import NoiseSchedule

        self.c, self.config, self.accelerator = components, config, accelerator
        self.schedule = NoiseSchedule.from_config(components.scheduler_config)   # noise, target, Min-SNR
        self.unet, self.text_encoder, self.vae = components.unet, components.text_encoder, components.vae
        for module in (components.unet, components.vae, components.text_encoder):
            module.requires_grad_(False)
            module.eval()
        self.prepare_modules()
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        cast = lambda module: torch.nn.Module.to(module, dtype=weight_dtype)  # diffusers' own .to() warns
        if not self.train_vae_decoder:
            cast(components.vae)
        cast_base = self.adapters_on_cast_base
        if not self.train_unet and (cast_base or not self.unet_adapters):
            cast(components.unet)
        if not self.train_text_encoder and (cast_base or not self.text_adapters):
            cast(components.text_encoder)
        if cast_base:                       # the adapters themselves train in fp32
            for p in self.parameters():
                p.data = p.data.float()

    def prepare_modules(self) -> None:
        """Mark the trainable parameters (a method overrides this)."""

    def trainable_modules(self) -> list[torch.nn.Module]:
        mods = []
        if self.train_unet or self.unet_adapters:
            mods.append(self.c.unet)
        if self.train_text_encoder or self.text_adapters:
            mods.append(self.c.text_encoder)
        if self.train_vae_decoder:
            mods.append(self.c.vae)
        return mods

    def set_prepared(self, modules: list[torch.nn.Module]) -> None:
        """Use the accelerate-prepared (e.g. DistributedDataParallel) modules in the loss."""
        for raw, prepared in zip(self.trainable_modules(), modules):
            if raw is self.c.unet:
                self.unet = prepared
            elif raw is self.c.text_encoder:
                self.text_encoder = prepared
            elif raw is self.c.vae:
                self.vae = prepared

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.trainable_modules() for p in m.parameters() if p.requires_grad]

    def param_groups(self, lr: float) -> list[dict]:
        """The optimizer's parameter groups: one, at the run's learning rate."""
        return [{"params": self.parameters()}]

    def after_step(self) -> None:
        pass

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        """"unet.<param>" / "text_encoder.<param>" / "vae.<param>" -> trainable parameter."""
        out = {}
        for comp in ("unet", "text_encoder", "vae"):
            module = getattr(self.c, comp)
            if module in self.trainable_modules():
                out.update({f"{comp}.{n}": p for n, p in module.named_parameters() if p.requires_grad})
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.named_trainable().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = self.named_trainable()
        if set(params) != set(state):
            diff = sorted(set(params) ^ set(state))[:3]
            raise ConfigError(f"checkpoint does not match this method's trainable parameters (e.g. {diff})")
        wrong = [k for k, p in params.items() if p.shape != state[k].shape]
        if wrong:
            raise ConfigError(f"checkpoint shapes differ from this run's (e.g. {wrong[0]}: "
                              f"{tuple(state[wrong[0]].shape)} saved, {tuple(params[wrong[0]].shape)} here)")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[k])

    def transform_text(self, text: str, seed: int) -> str:
        return text

    def shuffled_tags(self, text: str, seed: int) -> str:
        """With `config.shuffle_tags` (kohya's --shuffle_caption), the comma-separated tags of
        a caption after the first `config.keep_tags` in an order drawn from the sample's seed,
        so no tag learns to stand for a position."""
        if not self.config.shuffle_tags:
            return text
        tags = [t.strip() for t in text.split(",")]
        keep, rest = tags[:self.config.keep_tags], tags[self.config.keep_tags:]
        random.Random(seed * 7919 + 29).shuffle(rest)
        return ", ".join(t for t in keep + rest if t)

    def caption_or_empty(self, text: str, seed: int) -> str:
        """Caption dropout (Ho & Salimans 2022): the empty prompt with probability
        `config.caption_dropout`, drawn from the sample's seed so a resumed run draws the same."""
        p = self.config.caption_dropout
        return "" if p and random.Random(seed * 7919 + 17).random() < p else text

    # --- the loss ---------------------------------------------------------------------------
    def encode_text(self, texts: list[str], text_encoder=None) -> torch.Tensor:
        tok = self.c.tokenizer
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(self.c.device)
        return (self.text_encoder if text_encoder is None else text_encoder)(ids)[0]

    @torch.no_grad()
    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.c.vae
        return vae.encode(pixels.to(self.c.device, vae.dtype)).latent_dist.mode().float() * vae.config.scaling_factor

    def per_sample_loss(self, pixels: torch.Tensor, texts: list[str], seeds: list[int],
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error of the UNet prediction per sample, (B,); `latents`: the pixels'
        latents when already known."""
        latents = self.latents(pixels) if latents is None else latents
        noise, timesteps = sample_noise(latents.shape[1:], seeds, self.schedule.num_train_timesteps,
                                        self.config.noise_offset)
        cond = self.encode_text([self.caption_or_empty(self.shuffled_tags(self.transform_text(t, s), s), s)
                                 for t, s in zip(texts, seeds)])
        mse = self.prediction_error(self.unet, latents, noise, timesteps, cond)
        if self.config.snr_gamma is None:
            return mse
        return mse * self.schedule.min_snr_weights(timesteps, self.config.snr_gamma).to(mse.device)

    def prediction_error(self, unet, latents, noise, timesteps, cond) -> torch.Tensor:
        """Per-sample MSE of `unet`'s prediction (noise or velocity) for latents noised to `timesteps`."""
        noise, timesteps = noise.to(latents.device), timesteps.to(latents.device)
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        target = self.schedule.target(latents, noise, timesteps)
        unet_dtype = next(self.c.unet.parameters()).dtype
        pred = unet(noisy.to(unet_dtype), timesteps, encoder_hidden_states=cond.to(unet_dtype)).sample
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.per_sample_loss(batch.pixels, batch.texts, batch.seeds, batch.latents).mean()

    @torch.no_grad()
    def validation_loss(self, pixels: torch.Tensor, text: str, seed: int, timesteps: int = 4) -> float:
        """The plain prediction error of one image at `timesteps` fixed, evenly spread noise
        levels with fixed noise (no caption dropout, tag shuffling or Min-SNR weight), so it moves
        only when the model does: a steadier curve than the training loss, and on held-out
        images the sign of overfitting."""
        latents = self.latents(pixels[None]).expand(timesteps, -1, -1, -1)
        total = self.schedule.num_train_timesteps
        t = torch.tensor([int((k + 0.5) * total / timesteps) for k in range(timesteps)])
        noise, _ = sample_noise(latents.shape[1:], [seed * 31 + k for k in range(timesteps)], total)
        cond = self.encode_text([self.transform_text(text, seed)] * timesteps, self.c.text_encoder)
        return self.prediction_error(self.c.unet, latents, noise, t, cond).mean().item()   # unwrapped: one process

    # --- the VAE decoder ----------------------------------------------------------------------
    def mark_decoder_trainable(self) -> None:
        """The decoder half of the VAE trains; the encoder stays frozen, so the latents every
        UNet of this model was trained on (and its scaling factor) stay valid."""
        vae = self.c.vae
        for module in (vae.decoder, getattr(vae, "post_quant_conv", None)):
            if module is not None:
                module.requires_grad_(True)

    def decoder_loss(self, pixels: torch.Tensor, vae=None) -> torch.Tensor:
        """L1 + MSE between the images and their round trip through the VAE (the encoder's
        mode, no sampling), the pixel terms the shipped VAE was trained with. `vae` defaults to
        the prepared module, whose forward lets DDP sync its gradients."""
        x = pixels.to(self.c.device, torch.float32)
        rec = (self.vae if vae is None else vae)(x).sample.float()
        return (rec - x).abs().mean() + F.mse_loss(rec, x)


def native_resolution(components) -> int:
    return components.unet.config.sample_size * 2 ** (len(components.vae.config.block_out_channels) - 1)


def size_step(components) -> int:
    """The pixel multiple every training width and height must be: the VAE's downsampling
    times the UNet's (8 x 8 = 64 for SD 1.x / 2.x)."""
    return 2 ** (len(components.vae.config.block_out_channels) - 1) * \
        2 ** (len(components.unet.config.block_out_channels) - 1)


def save_model_folder(components, path: Path) -> Path:
    """The whole model as a diffusers folder (fp32, safetensors), written atomically; the
    tokenizer keeps vocab.json + merges.txt so the folder loads as a CLIPTokenizer anywhere, and
    the base model's recommended settings (generation_defaults.json) stay with it."""
    import shutil

    from ...io.atomic import atomic_dir
    from ...models.generation_defaults import write_generation_defaults
    from ...models.text_encoder_file import rewrite_portable

    pipe = components.to_pipeline()
    with atomic_dir(path) as tmp:
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.to(torch.float32)
        pipe.save_pretrained(tmp, safe_serialization=True)
        rewrite_portable(Path(tmp) / "text_encoder")        # text_model. keys: transformers 4.x loads them too
        src = Path(components.source) / "tokenizer"
        for name in ("vocab.json", "merges.txt"):
            if (src / name).is_file() and not (Path(tmp) / "tokenizer" / name).exists():
                shutil.copy(src / name, Path(tmp) / "tokenizer" / name)
        if defaults := components.extra.get("generation_defaults"):
            write_generation_defaults(tmp, **defaults)
    return Path(path)


def sample_noise(shape, seeds: list[int], num_timesteps: int, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise of `shape` (C, H, W) and a uniform timestep for each seed (CPU generators,
    so a sample's noise is the same on any device, in any process, after any resume). `offset`:
    offset noise (Guttenberg 2023), each channel shifted by offset x N(0, 1), drawn after the
    noise so offset 0 leaves every draw as it was."""
    noises, steps = [], []
    for seed in seeds:
        g = torch.Generator("cpu").manual_seed(seed)
        steps.append(torch.randint(0, num_timesteps, (1,), generator=g))
        noise = torch.randn(tuple(shape), generator=g)
        if offset:
            noise = noise + offset * torch.randn((shape[0], 1, 1), generator=g)
        noises.append(noise)
    return torch.stack(noises), torch.cat(steps)
