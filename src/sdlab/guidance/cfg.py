"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around any denoiser.

    D_cfg(x, sigma) = D(x, sigma, uncond) + scale * (D(x, sigma, cond) - D(x, sigma, uncond))

computed with ONE batched model call over [uncond, cond] (none for the uncond half when
scale == 1). Optional guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", Sec. 3.4 / eq. 15-16) pulls the per-sample standard deviation of the
guided prediction back towards that of the conditional one to counter over-exposure at high scales:

    x_rescaled = x_cfg * std(x_cond) / std(x_cfg);  x = phi * x_rescaled + (1 - phi) * x_cfg

Here the rescale acts on the denoised x0 prediction (the quantity the denoiser interface returns);
diffusers' pipelines apply it to the raw UNet output instead, so results differ slightly.

`cond` and `uncond` may each be a `ScheduledCond`, conditionings that change with the sampler step
(A1111 prompt editing, sdlab.text.prompt_schedule): the wrapper uses the entry of its current `step`,
which `on_step`, given to the sampler as a callback, advances after each step.
"""

from __future__ import annotations

import bisect
import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch

from ..errors import ConfigError
from ..sampling.denoiser import broadcast_batch, sigma_batch

# How many leading rows of the batch being denoised are CFG's unconditional half (0 outside a
# batched call); a ControlNet in guess mode acts on the other rows only (sdlab.control.unet).
UNCOND_ROWS: ContextVar[int] = ContextVar("sdlab_cfg_uncond_rows", default=0)


@dataclass(frozen=True)
class ScheduledCond:
    """Conditionings per sampler step: `conds[i]` is used while the (0-based) step is <= `ends[i]`
    (ascending), the last one after; every entry has the same shape."""

    ends: tuple[int, ...]
    conds: tuple[torch.Tensor, ...]

    def __post_init__(self):
        if not self.conds or len(self.ends) != len(self.conds) or list(self.ends) != sorted(self.ends):
            raise ConfigError("a ScheduledCond needs one ascending end step per conditioning, and at least one")
        if any(c.shape != self.conds[0].shape for c in self.conds):
            raise ConfigError(f"the conditionings of a ScheduledCond must have one shape, got "
                              f"{sorted({tuple(c.shape) for c in self.conds})}")

    def at(self, step: int) -> torch.Tensor:
        """The conditioning of sampler step `step`."""
        return self.conds[min(bisect.bisect_left(self.ends, step), len(self.conds) - 1)]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ScheduledCond":
        return ScheduledCond(self.ends, tuple(fn(c) for c in self.conds))


def map_cond(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`fn` applied to a tensor, or to each entry of a ScheduledCond."""
    return value.map(fn) if isinstance(value, ScheduledCond) else fn(value)


def cond_at(value: Any, step: int) -> Any:
    """`value` at sampler step `step`: a ScheduledCond's entry, anything else as it is."""
    return value.at(step) if isinstance(value, ScheduledCond) else value


@dataclass(frozen=True)
class GuidanceCond:
    """Conditioning for CFG: `cond` (e.g. prompt embeddings) and `uncond` (empty/negative prompt)."""

    cond: torch.Tensor
    uncond: Optional[torch.Tensor] = None

    @classmethod
    def coerce(cls, value: Any) -> "GuidanceCond":
        """A GuidanceCond from itself or a mapping with keys "cond" and optional "uncond"."""
        if isinstance(value, GuidanceCond):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"cond", "uncond"}
            if "cond" not in value or unknown:
                raise ConfigError(f"guidance cond must have keys 'cond' and optional 'uncond', got {sorted(value)}")
            return cls(cond=value["cond"], uncond=value.get("uncond"))
        raise ConfigError(f"guidance cond must be a GuidanceCond or a dict, got {type(value).__name__}")


def _check_number(name: str, value: Any, lo: float, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")
    return float(value)


def rescale_guidance(guided: torch.Tensor, cond_out: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2023 guidance rescale: mix `guided` rescaled to cond_out's per-sample std."""
    dims = tuple(range(1, guided.ndim))
    std_cond = cond_out.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided.clamp(min=1e-12))
    return phi * rescaled + (1 - phi) * guided


class CFGDenoiser:
    """`cfg(x, sigma, cond)` with cond a `GuidanceCond` (or {"cond": ..., "uncond": ...}).

    `scale` >= 0 (1 = no guidance, 0 = unconditional); `guidance_rescale` in [0, 1].
    """

    def __init__(self, denoiser: Callable[..., torch.Tensor], scale: float, guidance_rescale: float = 0.0):
        if not callable(denoiser):
            raise ConfigError(f"denoiser must be callable, got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.scale = _check_number("scale", scale, 0.0)
        self.guidance_rescale = _check_number("guidance_rescale", guidance_rescale, 0.0, 1.0)
        self.step = 0          # the sampler step, for ScheduledCond conditionings

    def on_step(self, event) -> None:
        """A StepCallback: the sampler finished step `event.step`, so the next calls belong to the next one."""
        self.step = event.step + 1

    def __call__(self, x: torch.Tensor, sigma: Any, cond: Any) -> torch.Tensor:
        c = GuidanceCond.coerce(cond)
        cond, uncond = cond_at(c.cond, self.step), cond_at(c.uncond, self.step)
        if self.scale == 1.0:
            return self.denoiser(x, sigma, cond)
        if uncond is None:
            raise ConfigError(f"uncond is required for guidance scale {self.scale} (only scale 1 works without it)")
        b = x.shape[0]
        cond_t, uncond_t = broadcast_batch(cond, b, "cond"), broadcast_batch(uncond, b, "uncond")
        if cond_t.shape[1:] != uncond_t.shape[1:]:
            raise ConfigError(f"uncond shape {tuple(uncond_t.shape[1:])} must match cond shape "
                              f"{tuple(cond_t.shape[1:])} to batch them in one call")
        s = sigma_batch(sigma, x)
        token = UNCOND_ROWS.set(b)
        try:
            out = self.denoiser(torch.cat([x, x]), torch.cat([s, s]), torch.cat([uncond_t, cond_t.to(uncond_t)]))
        finally:
            UNCOND_ROWS.reset(token)
        out_uncond, out_cond = out.chunk(2)
        guided = out_uncond + self.scale * (out_cond - out_uncond)
        if self.guidance_rescale > 0:
            guided = rescale_guidance(guided, out_cond, self.guidance_rescale)
        return guided
