"""Latent consistency distillation's options, torch-free (what `sdlab train lcm --help` shows); the
method is lcm.py."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import check_settings, setting
from ...errors import ConfigError
from .lora_options import LoraOptions
from .registry import Declaration

LOSSES = ("huber", "l2")
W_DIM = 256                         # the guidance embedding's size (time_cond_proj_dim) by default
TARGET_DECAY = 0.95                 # the LCM paper's EMA rate of the target network
W_LOW, W_HIGH = 0.4, 1.6            # the teacher's guidance range around the model's recommended CFG scale


@dataclass(frozen=True)
class LCMOptions:
    lora: bool = setting(False, "distil into an LCM-LoRA (adapters on the UNet, no w-conditioning; sample with "
                         "--cfg-scale 1) instead of a full w-conditioned LCM UNet")
    w_min: float | None = setting(None, "lowest teacher guidance scale (CFG scale, as --cfg-scale) drawn per "
                                  "example", lo=1.0, hi=100.0, default_text=f"{W_LOW} x the model's recommended "
                                  "scale: 3 for Stable Diffusion's 7.5")
    w_max: float | None = setting(None, "highest teacher guidance scale drawn per example", lo=1.0, hi=100.0,
                                  default_text=f"{W_HIGH} x the model's recommended scale: 12 for 7.5")
    loss_type: str = setting("huber", "huber: pseudo-Huber, the LCM paper's; l2: mean squared error",
                             choices=lambda: LOSSES)
    huber_c: float = setting(0.001, "pseudo-Huber's c", lo=1e-6, hi=10.0)
    w_dim: int | None = setting(None, "size of the guidance embedding of a full LCM (time_cond_proj_dim)", lo=2,
                                hi=4096, default_text=str(W_DIM))
    target_decay: float | None = setting(None, "EMA decay of a full LCM's target network", lo=0.0, hi=1.0,
                                         default_text=str(TARGET_DECAY))
    rank: int | None = setting(None, "LCM-LoRA rank", lo=1, hi=1024, default_text="16")
    lora_targets: str | None = setting(None, "LCM-LoRA's layers, as lora's --targets", default_text="all")

    def __post_init__(self):
        check_settings(self)
        if self.loss_type not in LOSSES:
            raise ConfigError(f"loss_type must be one of {', '.join(LOSSES)}; got {self.loss_type!r}")
        if self.w_min is not None and self.w_max is not None:
            self.guidance_range(7.5)                # the order checked now when both are given
        full, adapters = ("w_dim", "target_decay"), ("rank", "lora_targets")
        given = [n for n in (full if self.lora else adapters) if getattr(self, n) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ConfigError(f"{flag} is an option of {'a full LCM (drop --lora)' if self.lora else 'an LCM-LoRA'}"
                              f"{'' if self.lora else ' (add --lora)'}: an LCM-LoRA has no w-conditioning and no "
                              "target network; a full LCM no adapters")
        # the mode's defaults filled in, so a resume that names a default (--w-dim 256) keeps the options
        own = {"rank": 16, "lora_targets": "all"} if self.lora else {"w_dim": W_DIM, "target_decay": TARGET_DECAY}
        for name, value in own.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.lora:
            LoraOptions(rank=self.rank, targets=self.lora_targets)        # the same checks

    def guidance_range(self, recommended: float) -> tuple[float, float]:
        """[w_min, w_max] for a model whose recommended CFG scale is `recommended` (the unset ends
        W_LOW and W_HIGH times it, at least 1: LCM-SD's 3..12 around 7.5)."""
        low = max(1.0, W_LOW * recommended) if self.w_min is None else self.w_min
        high = max(1.0, W_HIGH * recommended) if self.w_max is None else self.w_max
        if low > high:
            raise ConfigError(f"w_min ({low:g}) must be <= w_max ({high:g}): the teacher's guidance scale is drawn "
                              f"from [w_min, w_max] (unset, they are {W_LOW:g} and {W_HIGH:g} x the model's "
                              f"recommended scale, {recommended:g})")
        return low, high

    def lora_options(self) -> LoraOptions:
        return LoraOptions(rank=self.rank or 16, targets=self.lora_targets or "all")


DECLARATION = Declaration(
    name="lcm", options=LCMOptions,
    summary="latent consistency distillation: a few-step LCM UNet or LCM-LoRA (Luo et al. 2023)",
    # measured on the shipped v2 model, batch 8, one CPU thread (process CPU time, the machine shared): 0.65 s a
    # step for the full LCM, 0.85 s for the LCM-LoRA (rank 16, every layer): 3000 steps take 33 and 43 minutes
    recipe=dict(learning_rate=1e-4, adam_weight_decay=0.0, max_steps=3000, batch_size=8, cache_latents=True,
                caption_dropout=0.0, checkpoint_every=250))
