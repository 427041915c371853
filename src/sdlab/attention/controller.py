"""Attention controllers: what the attention hook shows its probabilities to (prompt-to-prompt's
`AttentionControl`, Hertz et al. 2022, on sdlab's loop).

A controller is called per attention layer as

    controller(probs, is_cross, place_in_unet, layer=LayerInfo) -> probs

with `probs` of shape (B, heads, queries, keys). The base class passes only the conditional rows
of a classifier-free-guidance batch [uncond, cond] to `forward`, leaves the rest as they are,
and keeps count of where the loop is:

- `step`: the index of the noise level being denoised. A UNet forward pre-hook (installed by
  `attention_control`) reads each call's timestep; a new timestep starts a new step, a repeated
  one (Heun's correction at sigma_{i+1} followed by step i+1 at the same sigma) does not. So the
  step follows the noise level whichever sampler runs, and one loop of N steps sees steps 0..N-1.
- `forward_count`: UNet calls so far in this loop; `latent_hw`, `batch`: the latest call's sizes.

Which rows are conditional: `cfg=True` (batch is [uncond, cond]), `cfg=False` (all rows), or
None (the default): inferred from `batch_size` (images per loop) when given, else a batch of
even size is taken as a CFG batch. Give `batch_size` or `cfg` when sampling at CFG scale 1.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import ConfigError
from .processor import LayerInfo


class AttentionController:
    """Base controller: counts steps and forwards the conditional rows to `forward`.

    Subclasses override `wants(layer)` (compute this layer's probabilities explicitly now?) and
    `forward(probs, is_cross, place_in_unet, layer)`. The base wants nothing, so a bare
    controller leaves the UNet on its fast path.
    """

    def __init__(self, *, batch_size: Optional[int] = None, cfg: Optional[bool] = None):
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
        if cfg not in (None, True, False):
            raise ConfigError(f"cfg must be True, False or None, got {cfg!r}")
        self.batch_size, self.cfg = batch_size, cfg
        self.step, self.forward_count, self.batch = -1, 0, 0
        self.latent_hw: tuple[int, int] = (0, 0)
        self._last_t: Optional[float] = None

    # --- loop bookkeeping (called by attention_control's hook) --------------------------------
    def begin_loop(self) -> None:
        """A new sampling loop starts: counting restarts."""
        self.step, self.forward_count, self._last_t = -1, 0, None

    def begin_forward(self, sample: torch.Tensor, timestep) -> None:
        """One UNet call is about to run on `sample` (B, C, h, w) at `timestep`."""
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        if self._last_t is None or t != self._last_t:
            self.step += 1
        self._last_t = t
        self.forward_count += 1
        self.batch = int(sample.shape[0])
        self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))

    def end_loop(self) -> None:
        """The sampling loop is over (the context exits)."""

    # --- geometry -----------------------------------------------------------------------------
    def resolution(self, queries: int) -> tuple[int, int]:
        """(h, w) of a layer with `queries` pixels: the latent grid downsampled 2^k times (ceil)."""
        h, w = self.latent_hw
        for k in range(12):
            hk, wk = math.ceil(h / 2**k), math.ceil(w / 2**k)
            if hk * wk == queries:
                return hk, wk
        side = int(round(math.sqrt(queries)))
        return side, max(queries // max(side, 1), 1)

    def cond_rows(self) -> slice:
        """The rows of the current batch that carry the prompt (the second half of a CFG batch)."""
        b = self.batch
        cfg = self.cfg
        if cfg is None:
            cfg = b == 2 * self.batch_size if self.batch_size else b % 2 == 0
        return slice(b // 2, b) if cfg else slice(0, b)

    # --- the controller interface -------------------------------------------------------------
    def wants(self, layer: LayerInfo) -> bool:
        """Should `layer` compute explicit probabilities and call this controller at this step?"""
        return False

    def forward(self, probs: torch.Tensor, is_cross: bool, place_in_unet: str, layer: LayerInfo) -> torch.Tensor:
        """See or edit the conditional rows' probabilities (rows, heads, queries, keys)."""
        return probs

    def __call__(self, probs: torch.Tensor, is_cross: bool, place_in_unet: str, *,
                 layer: LayerInfo) -> torch.Tensor:
        if probs.shape[0] != self.batch:
            raise ConfigError(f"attention probs have {probs.shape[0]} rows but the UNet batch has {self.batch}; "
                              "install controllers with sdlab.attention.attention_control")
        view = probs[self.cond_rows()]
        edited = self.forward(view, is_cross, place_in_unet, layer)
        if edited is not view:
            probs = probs.clone()
            probs[self.cond_rows()] = edited
        return probs
