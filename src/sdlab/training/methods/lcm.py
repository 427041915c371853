"""Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models"; LCM-LoRA, Luo et
al. 2023b): a few-step model distilled from a frozen teacher, the base model with classifier-free
guidance.

Each sample: a grid timestep t_{n+k} of the teacher's DDIM grid (sdlab.sampling.sigmas.lcm_grid,
N = 50 of 1000 timesteps, so the skip k is 20 timesteps, one grid step) and a guidance scale w drawn
from [w_min, w_max] (CFG-scale units, as --cfg-scale; by default 0.4 to 1.6 times the model's
recommended scale, LCM-SD's 3 to 12 for Stable Diffusion's 7.5); the latents noised to t_{n+k}; one DDIM step
of the teacher with CFG at w (uncond: the empty prompt, as sdlab samples) to t_n; loss between the
student's consistency output f(x_{t_{n+k}}) and the target network's f(x_{t_n}) (pseudo-Huber, c =
0.001, or L2), f = c_skip(t) x_t + c_out(t) x0(t) with LCMScheduler's boundary condition
(sdlab.sampling.denoiser.consistency_scalings). x0 and epsilon come from the model's own
prediction type (x0 = alpha x - sigma v, eps = sigma x + alpha v for v; alpha = 0 at a
zero-terminal-SNR schedule's last step is fine for v).

Full (default): the student is the UNet plus a guidance embedding (`time_cond_proj_dim`; the
embedding of w - 1, as diffusers' LatentConsistencyModelPipeline) through a zero-initialised
projection, so it starts equal to the teacher; the target network is an EMA of the student
(decay --target-decay). Saves the student as a diffusers folder `OUTPUT/model` (scheduler:
LCMScheduler). Sample: `--sampler LCM --steps 4 --cfg-scale W`, one UNet pass per step.

--lora: LCM-LoRA, peft adapters on the UNet only (the LoRA method's code), no w-conditioning, the
target the student itself without gradients; saves `OUTPUT/lcm_lora.safetensors` (diffusers / peft
keys: `pipe.load_lora_weights`). Sample: `--lora FILE --sampler LCM --steps 4 --cfg-scale 1`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path

import torch

from ...errors import ConfigError
from ...models import lora as lora_files
from ...sampling.denoiser import consistency_scalings, guidance_embedding
from ...sampling.sigmas import LCM_GRID, lcm_grid
from ..card import trained_prompt
from ..checkpoints import trained_weights
from .base import Batch, DiffusionMethod, save_model_folder
from .lcm_options import DECLARATION, TARGET_DECAY, W_DIM, LCMOptions
from .lora import LoRA
from .registry import MethodSpec

LORA_FILE = "lcm_lora.safetensors"


def w_conditioned_unet(unet, dim: int):
    """A copy of `unet` with a guidance embedding of size `dim` (diffusers' time_cond_proj_dim): its
    projection into the time embedding starts at zero, so the copy computes what `unet` does."""
    from diffusers import UNet2DConditionModel

    if unet.config.get("time_cond_proj_dim") is not None:
        raise ConfigError("this UNet has a guidance embedding already (time_cond_proj_dim): it is an LCM; distil "
                          "its base model, or use --lora")
    student = UNet2DConditionModel.from_config({**unet.config, "time_cond_proj_dim": dim})
    missing = student.load_state_dict(unet.state_dict(), strict=False)
    if missing.unexpected_keys or set(missing.missing_keys) != {"time_embedding.cond_proj.weight"}:
        raise ConfigError(f"cannot add a guidance embedding to this UNet: {missing}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return torch.nn.Module.to(student, next(unet.parameters()).device, torch.float32)   # diffusers .to() warns


class LCMDistillation(DiffusionMethod):
    name = "lcm"

    def __init__(self, options: LCMOptions | None = None):
        self.options = options or LCMOptions()
        self.unet_adapters = self.adapters_on_cast_base = self.options.lora
        self.lora = self.student = self.target = None

    # --- modules ------------------------------------------------------------------------------
    def prepare_modules(self) -> None:
        if self.options.lora:
            self.lora = LoRA(self.options.lora_options())
            self.lora.c = self.c
            self.lora.prepare_modules()
            self.student = self.c.unet
        else:
            self.student = w_conditioned_unet(self.c.unet, self.options.w_dim or W_DIM).requires_grad_(True).train()
            self.target = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.student_train = self.student
        grid = lcm_grid(self.schedule.num_train_timesteps, LCM_GRID)
        self.grid, self.skip = torch.from_numpy(grid), int(grid[0] + 1)
        self.w_range = self.options.guidance_range(self.recommended_scale())

    def recommended_scale(self) -> float:
        """The base model's recommended CFG scale (its generation_defaults.json, else 7.5)."""
        from ...models.generation_defaults import settings_of

        return float(settings_of(self.c)["cfg_scale"])

    def setup(self, components, config, accelerator) -> None:
        super().setup(components, config, accelerator)
        if self.target is not None:                 # the loop's memory options on the student too
            from types import SimpleNamespace

            from ..loop import apply_memory_options
            view = SimpleNamespace(c=SimpleNamespace(unet=self.student, text_encoder=self.c.text_encoder),
                                   trainable_modules=lambda: [self.student])
            apply_memory_options(view, config)

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.student]

    def validation_sampling(self):
        """The loop's sample grids show the student as it is used: the LCM sampler at 4 steps, a full
        LCM's UNet with w = the model's recommended scale, an LCM-LoRA (on the components' UNet) at CFG 1."""
        settings = {"sampler": "LCM", "steps": 4, "cfg_scale": 1.0 if self.options.lora else self.recommended_scale()}
        return (self.c if self.options.lora else dataclasses.replace(self.c, unet=self.student)), settings

    def set_prepared(self, modules: list[torch.nn.Module]) -> None:
        self.student_train = modules[0]
        if self.options.lora:
            self.unet = modules[0]

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {f"unet.{n}": p for n, p in self.student.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        if self.target is not None:
            state.update({f"target.{k}": v.detach().clone() for k, v in self.target.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith("target.")})
        if self.target is not None:
            self.target.load_state_dict({k[len("target."):]: v for k, v in state.items() if k.startswith("target.")})

    def after_step(self) -> None:
        """The target network follows the student (EMA, the LCM paper's mu)."""
        if self.target is not None:
            decay = TARGET_DECAY if self.options.target_decay is None else self.options.target_decay
            with torch.no_grad():
                for t, s in zip(self.target.parameters(), self.student.parameters()):
                    t.lerp_(s.detach().to(t.dtype), 1.0 - decay)

    # --- the loss ---------------------------------------------------------------------------------
    def draws(self, seeds: list[int], shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(grid index, guidance scale w, noise) of each sample, from its own seed (CPU generators:
        the same on any device and after any resume)."""
        (low, high), index, w, noise = self.w_range, [], [], []
        for seed in seeds:
            g = torch.Generator("cpu").manual_seed(seed)
            index.append(torch.randint(0, len(self.grid), (1,), generator=g))
            w.append(low + (high - low) * torch.rand(1, generator=g))
            noise.append(torch.randn(tuple(shape), generator=g))
        return torch.cat(index), torch.cat(w), torch.stack(noise)

    def x0_eps(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, epsilon) of a prediction `out` (epsilon or v) for x_t at integer timesteps `t`."""
        a, s = self.schedule._coefficients(t, x)
        if self.schedule.prediction_type == "epsilon":
            return (x - s * out) / a.clamp(min=1e-8), out
        return a * x - s * out, s * x + a * out

    def consistency(self, unet, x: torch.Tensor, t: torch.Tensor, cond, w_emb) -> torch.Tensor:
        """f(x, t) = c_skip(t) x + c_out(t) x0(unet(x, t))."""
        dtype = next(unet.parameters()).dtype          # the student fp32, a cast base (LoRA) low precision
        extra = {"timestep_cond": w_emb.to(x.device, dtype)} if w_emb is not None else {}
        out = unet(x.to(dtype), t, encoder_hidden_states=cond.to(dtype), **extra).sample.float()
        c_skip, c_out = (c.to(x.device).reshape(-1, 1, 1, 1) for c in consistency_scalings(t.cpu()))
        return c_skip * x + c_out * self.x0_eps(out, x, t)[0]

    @torch.no_grad()
    def teacher_step(self, x: torch.Tensor, t: torch.Tensor, prev: torch.Tensor, cond, uncond, w) -> torch.Tensor:
        """One DDIM step (Song et al. 2021, eta 0) of the frozen base UNet with CFG at `w`, t -> prev."""
        dtype = next(self.c.unet.parameters()).dtype
        with self.base_unet() as unet:
            out = unet(torch.cat([x, x]).to(dtype), torch.cat([t, t]),
                       encoder_hidden_states=torch.cat([uncond, cond]).to(dtype)).sample.float()
        (x0_u, eps_u), (x0_c, eps_c) = (self.x0_eps(o, x, t) for o in out.chunk(2))
        w = w.to(x.device).reshape(-1, 1, 1, 1)
        x0, eps = x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u)
        a, s = self.schedule._coefficients(prev, x)
        return a * x0 + s * eps

    @contextlib.contextmanager
    def base_unet(self):
        """The teacher: the base UNet (its LCM-LoRA adapters switched off while it runs)."""
        if self.lora is None:
            yield self.c.unet
            return
        self.c.unet.disable_adapters()
        try:
            yield self.c.unet
        finally:
            self.c.unet.enable_adapters()

    def loss(self, batch: Batch) -> torch.Tensor:
        latents = self.latents(batch.pixels) if batch.latents is None else batch.latents
        device = latents.device
        index, w, noise = self.draws(batch.seeds, latents.shape[1:])
        t = self.grid[index].to(device)
        prev = (t - self.skip).clamp(min=0)
        with torch.no_grad():
            cond = self.encode_text([self.caption_or_empty(self.shuffled_tags(text, s), s)
                                     for text, s in zip(batch.texts, batch.seeds)])
            uncond = self.encode_text([""] * len(batch.seeds))
        x = self.schedule.add_noise(latents, noise.to(device), t)
        w_emb = guidance_embedding(w - 1.0, self.student.config.time_cond_proj_dim) if self.target is not None \
            else None
        x_prev = self.teacher_step(x, t, prev, cond, uncond, w)
        with torch.no_grad():
            target = self.consistency(self.target if self.target is not None else self.student_train, x_prev, prev,
                                      cond, w_emb)
        pred = self.consistency(self.student_train, x, t, cond, w_emb)
        if self.options.loss_type == "l2":
            return torch.nn.functional.mse_loss(pred, target)
        c = self.options.huber_c
        return (((pred - target) ** 2 + c**2).sqrt() - c).mean()

    @torch.no_grad()
    def validation_loss(self, pixels: torch.Tensor, text: str, seed: int, timesteps: int = 4) -> float:
        """The distillation loss of one image at fixed draws (its seed), with the unwrapped student."""
        student, self.student_train = self.student_train, self.student
        try:
            return sum(self.loss(Batch(pixels[None], [text], [seed * 31 + k], [k])).item()
                       for k in range(timesteps)) / timesteps
        finally:
            self.student_train = student

    # --- results --------------------------------------------------------------------------------
    def save(self, output_dir: Path) -> list[Path]:
        out = Path(output_dir)
        if self.lora is not None:
            return [lora_files.write(out / LORA_FILE, self.lora.layers(), "diffusers")]
        scheduler = lcm_scheduler_config(self.c.scheduler_config)
        return [save_model_folder(dataclasses.replace(self.c, unet=self.student, scheduler_config=scheduler),
                                  out / "model")]


def lcm_scheduler_config(config: dict) -> dict:
    """The base model's scheduler config as an LCMScheduler's (its keys that LCMScheduler takes, the
    distillation grid as original_inference_steps), so diffusers samples the saved model as sdlab does."""
    import inspect

    from diffusers import LCMScheduler

    takes = set(inspect.signature(LCMScheduler.__init__).parameters)
    kept = {k: v for k, v in config.items() if k in takes or k.startswith("_")}
    return {**kept, "_class_name": "LCMScheduler", "original_inference_steps": LCM_GRID, "timestep_scaling": 10.0}


def apply_checkpoint(pipe, state: dict, path) -> None:
    """A checkpoint's student into `pipe`: an LCM-LoRA's adapters merged at scale 1 (as lora's), or
    the full LCM's w-conditioned UNet in place of the pipeline's."""
    from .lora import apply_checkpoint as apply_lora

    opts = state.get("options") or {}
    if opts.get("lora"):
        return apply_lora(pipe, {**state, "options": {"rank": opts.get("rank") or 16}}, path)
    weights = {k[len("unet."):]: v for k, v in trained_weights(state).items() if k.startswith("unet.")}
    unet = w_conditioned_unet(pipe.c.unet, weights["time_embedding.cond_proj.weight"].shape[1])
    unet.load_state_dict(weights)
    pipe.c.unet = unet.to(pipe.c.device, pipe.c.dtype).eval()
    pipe.denoiser = type(pipe.denoiser)(pipe.c.unet, pipe.schedule)


def usage(config, options: LCMOptions, saved: dict, out: Path) -> list[str]:
    prompt = trained_prompt(config)
    if options.lora:
        return [f'sdlab generate "{prompt}" --lora {saved[LORA_FILE]} --sampler LCM --steps 4 --cfg-scale 1']
    from ...models.generation_defaults import model_default       # the base's, saved with the model

    scale = model_default(saved["model"], "cfg_scale")
    return [f'sdlab generate "{prompt}" --model {saved["model"]} --sampler LCM --steps 4 --cfg-scale {scale:g}']


def footprint(c, options: LCMOptions, low: bool):
    """LCM-LoRA: lora's. Full: the student trains in fp32 as a fine-tune does, beside the frozen
    teacher (cast) and the fp32 target network."""
    from ..memory import numel, whole_unet_footprint
    from .lora import footprint as lora_footprint

    if options.lora:
        return lora_footprint(c, options.lora_options(), low)
    f = whole_unet_footprint(c, low, False)
    return dataclasses.replace(f, weights=f.weights + numel(c.unet) * (4 + (2 if low else 4)))


SPEC = MethodSpec.declared(
    DECLARATION, method=LCMDistillation, resume_keeps=("lora", "w_dim", "rank", "lora_targets"),
    apply_checkpoint=apply_checkpoint, usage=usage, footprint=footprint)
