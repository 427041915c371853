"""Store cross-attention maps per token (prompt-to-prompt's `AttentionStore`, Hertz et al. 2022).

For the conditional rows of each UNet call, every chosen cross-attention layer's probabilities
(rows, heads, pixels, tokens) are averaged over heads and summed per layer resolution; `maps()`
averages over layers and steps, upsampling coarse layers to the finest stored grid. Every pixel's
map is a softmax over the text tokens, so a stored map sums to 1 over tokens at each pixel.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .controller import AttentionController
from .processor import PLACES, LayerInfo

ALL_PLACES = tuple(PLACES.values())


def check_places(places: Iterable[str]) -> tuple[str, ...]:
    """Places in the UNet as a tuple, each one of "down", "mid", "up"."""
    out = tuple(places)
    bad = [p for p in out if p not in ALL_PLACES]
    if bad or not out:
        raise ConfigError(f"layers must be some of {', '.join(ALL_PLACES)}, got {', '.join(map(str, out)) or 'none'}")
    return out


def _check_resolutions(res) -> Optional[tuple[int, ...]]:
    if res is None:
        return None
    out = tuple(res)
    if not out or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in out):
        raise ConfigError(f"resolutions must be positive integers (feature-map heights, e.g. 16 8), got {res!r}")
    return out


def _check_steps(steps) -> Optional[tuple[int, int]]:
    if steps is None:
        return None
    ok = (isinstance(steps, (tuple, list)) and len(steps) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) for s in steps) and 0 <= steps[0] < steps[1])
    if not ok:
        raise ConfigError(f"steps must be a (start, end) pair of step indices with 0 <= start < end, got {steps!r}")
    return tuple(steps)


class AttentionStore(AttentionController):
    """Average cross-attention maps of the conditional rows over heads, chosen layers and steps.

    places: UNet places to record ("down", "mid", "up"); resolutions: feature-map heights to
    record (None = all); steps: (start, end) step indices to record (None = all).
    Each sampling loop starts a new record: after generate() with several batches, the maps
    are those of the last batch (rows = its images).
    """

    def __init__(self, places: Iterable[str] = ALL_PLACES, resolutions: Optional[Iterable[int]] = None,
                 steps: Optional[tuple[int, int]] = None, **kwargs):
        super().__init__(**kwargs)
        self.places = check_places(places)
        self.resolutions = _check_resolutions(resolutions)
        self.steps = _check_steps(steps)
        self.sums: dict[tuple[int, int], torch.Tensor] = {}
        self.counts: dict[tuple[int, int], int] = {}

    def begin_loop(self) -> None:
        super().begin_loop()
        self.sums, self.counts = {}, {}

    def _step_ok(self) -> bool:
        return self.steps is None or self.steps[0] <= self.step < self.steps[1]

    def wants(self, layer: LayerInfo) -> bool:
        if not (layer.is_cross and layer.place in self.places and self._step_ok()):
            return False
        return self.resolutions is None or self.resolution(layer.queries)[0] in self.resolutions

    def forward(self, probs, is_cross, place_in_unet, layer):
        if not is_cross:
            return probs
        hw = self.resolution(layer.queries)
        mean = probs.float().mean(dim=1).detach().cpu()  # (rows, pixels, tokens)
        if hw in self.sums and self.sums[hw].shape == mean.shape:
            self.sums[hw] += mean
            self.counts[hw] += 1
        else:
            self.sums[hw], self.counts[hw] = mean, 1
        return probs

    def maps(self) -> torch.Tensor:
        """(rows, h, w, tokens): the mean map over every recorded layer call, on the finest grid."""
        if not self.sums:
            raise ConfigError("no cross-attention was recorded: check the layers, resolutions and steps "
                              "chosen against the model's cross-attention layers")
        return mean_maps([(hw, s, self.counts[hw]) for hw, s in self.sums.items()])


def mean_maps(parts) -> torch.Tensor:
    """Mean of summed maps [((h, w), sum (rows, h*w, tokens), count), ...] on the finest grid
    (coarser ones bilinearly upsampled): (rows, H, W, tokens)."""
    h, w = max((hw for hw, _, _ in parts), key=lambda k: k[0] * k[1])
    total, n = None, 0
    for (hh, ww), s, count in parts:
        rows, _, tokens = s.shape
        grid = s.reshape(rows, hh, ww, tokens).permute(0, 3, 1, 2)
        if (hh, ww) != (h, w):
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        total = grid if total is None else total + grid
        n += count
    return (total / n).permute(0, 2, 3, 1)


def attend(pipe, config, *, places: Iterable[str] = ALL_PLACES, resolutions: Optional[Iterable[int]] = None,
           steps: Optional[tuple[int, int]] = None, callback=None, cancel=None):
    """Generate config's first image with an AttentionStore installed: (GenerationResult, maps
    of shape (batch_size, h, w, tokens)). callback/cancel as in Pipeline.generate."""
    from dataclasses import replace

    config = pipe.resolved(replace(config, batch_count=1))
    store = AttentionStore(places, resolutions, steps, batch_size=config.batch_size, cfg=config.cfg_scale != 1)
    result = pipe.generate(config, attention=store, callback=callback, cancel=cancel)
    return result, store.maps()
