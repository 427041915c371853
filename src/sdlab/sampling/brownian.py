"""Brownian-tree noise for the SDE samplers (k-diffusion's BrownianTreeNoiseSampler, on torchsde).

The noise of a step from sigma to sigma' is the increment of one Brownian path over that interval,
normalised to unit variance, so a step's sub-steps and the steps of a finer schedule see noise
consistent with it: the image of a seed changes little with the step count.

Brownian time is the VP noise level s(sigma) = sigma / sqrt(1 + sigma^2) in [0, 1), not sigma itself
(k-diffusion's default): the tree spans the schedule's range, and under zero terminal SNR the first
sigma stands in for infinity (~4096, clamped), so with sigma as time every increment would depend on
the clamp; in s the tree ends at s(sigma_max) = 1 - 3e-8, the first step's noise moves continuously
with it, and the result has a limit as the first sigma grows.

The trees resolve time to TOL (torchsde rounds query times to it), so s(sigma) for every sigma above
~700 is 1: those sigmas are pure noise in any model, and a step between two of them (DPM++ SDE's midpoint
of a step from the SNR-0 sigma) gets fresh Gaussian noise from the generator instead.

Trees are built on the CPU from seeds drawn from the sampler's generator(s), so a seed reproduces
across devices: one tree per batch row for a list of generators (each row reproducible alone), one
for the whole batch for a single generator (or the global one when None).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torchsde

from ..errors import ConfigError
from .noise import Generators, randn_like

TOL = 1e-6


def vp_noise_level(sigma: float) -> float:
    """s = sigma / sqrt(1 + sigma^2), the noise std of x_t = sqrt(a) x0 + sqrt(1 - a) eps."""
    return sigma / math.sqrt(1.0 + sigma * sigma)


def _time(sigma: float) -> float:
    return round(vp_noise_level(float(sigma)), -round(math.log10(TOL)))


def _seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (), generator=generator))


class BrownianNoise:
    """noise(sigma, sigma') -> unit-variance noise shaped like `like`, the Brownian increment over
    [sigma', sigma] in time `vp_noise_level`. Trees are made on the first call (a schedule whose
    only step goes to 0 needs none)."""

    def __init__(self, like: torch.Tensor, sigmas: Sequence[float], generator: Generators = None) -> None:
        positive = [float(s) for s in sigmas if s > 0]
        self.t0, self.t1 = _time(min(positive)), _time(max(positive))
        self.like, self.generator = like, generator
        self.per_row = not (generator is None or isinstance(generator, torch.Generator))
        generators = list(generator) if self.per_row else [generator]
        if self.per_row and len(generators) != like.shape[0]:
            raise ConfigError(f"generator list has {len(generators)} generators for a batch of {like.shape[0]}")
        self.seeds = [_seed(g) for g in generators]
        self.trees: list = []

    def _tree(self, seed: int):
        shape = self.like.shape[1:] if self.per_row else self.like.shape
        return torchsde.BrownianInterval(t0=self.t0, t1=self.t1, size=tuple(shape), dtype=torch.float32,
                                         device="cpu", entropy=seed, tol=TOL, pool_size=24, halfway_tree=True)

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        lo, hi = sorted(min(max(_time(s), self.t0), self.t1) for s in (sigma, sigma_next))
        if hi <= lo:     # closer than the trees resolve
            return randn_like(self.like, self.generator)
        if not self.trees:
            self.trees = [self._tree(seed) for seed in self.seeds]
        w = torch.stack([tree(lo, hi) for tree in self.trees]) if self.per_row else self.trees[0](lo, hi)
        return (w / math.sqrt(hi - lo)).to(device=self.like.device, dtype=self.like.dtype)
