"""The img2img start (SDEdit, Meng et al. 2022): noise a clean latent to an intermediate sigma and
run only the tail of the sampling schedule from there.

As in diffusers' img2img pipelines, `strength` runs int(steps * strength) of the `steps` steps:
strength 1 starts from (almost) pure noise at sigmas[0], strength 0 returns the latent untouched.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ..errors import ConfigError
from .noise import Generators, randn_like


def check_strength(strength: Any) -> float:
    """`strength` as a float, or ConfigError unless it is a number in [0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise ConfigError(f"strength must be a number in [0, 1], got {strength!r}")
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"strength must be in [0, 1], got {strength}")
    return float(strength)


def img2img_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of `sigmas` (descending, ending with 0) to run: int(steps * strength) steps."""
    strength = check_strength(strength)
    steps = len(sigmas) - 1
    run = min(int(steps * strength), steps)
    return sigmas[steps - run:]


def img2img_start(x0: torch.Tensor, strength: float, sigmas: torch.Tensor, *,
                  generator: Generators = None,
                  noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas to run, start latent x0 + noise * sigmas_to_run[0]) for an img2img run.

    Noise is drawn from `generator` on the CPU unless `noise` is given. With zero steps to run
    (strength 0, or too small for one step) the latent comes back unchanged and the tail is [0].
    """
    tail = img2img_sigmas(sigmas, strength)
    if len(tail) == 1:
        return tail, x0
    if noise is None:
        noise = randn_like(x0, generator)
    return tail, x0 + noise.to(device=x0.device, dtype=x0.dtype) * float(tail[0])
