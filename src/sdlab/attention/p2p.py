"""Prompt-to-prompt editing controllers (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with
Cross Attention Control"), on a batch whose conditional rows are [source, target].

At every step the target's cross-attention maps are edited from the source's (the mapping of
sdlab.attention.align) while `step < cross_steps`, then multiplied per target token by the
`equalizer` (attention reweighting; applied at every step, here to the edited maps, so a
reweight without a swap scales the source's maps as in the paper). While `step < self_steps`,
self-attention layers with at most `self_max_queries` pixels take the source's maps as well
(the paper's 16x16 limit of SD's 64x64 latents). Unconditional rows are left alone, as in the
paper's code.

`LocalBlend` keeps everything outside the edited words' attention mask from the source: after
each step, x_target = x_source + mask * (x_target - x_source), where mask is the union over the two
rows of the chosen words' maps (summed over words, averaged over layers and heads, max-pooled
3x3, divided by their maximum) above `threshold`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..callbacks import StepEvent
from .controller import AttentionController
from .processor import LayerInfo


class LocalBlend:
    """Mask from the cross-attention of chosen tokens, applied to the latents after each step.

    positions: (source token positions, target token positions); start: the first step that blends.
    """

    def __init__(self, positions: tuple[list[int], list[int]], threshold: float = 0.3, start: int = 0):
        self.positions, self.threshold, self.start = positions, threshold, start
        self.reset()

    def reset(self) -> None:
        self.total: Optional[torch.Tensor] = None
        self.count = 0
        self.mask: Optional[torch.Tensor] = None

    def record(self, probs: torch.Tensor, hw: tuple[int, int], latent_hw: tuple[int, int]) -> None:
        """Add one cross-attention layer's maps (2, heads, pixels, tokens) of rows [source, target]."""
        words = torch.stack([probs[r, ..., pos].float().mean(0).sum(-1) for r, pos in enumerate(self.positions)])
        grid = words.reshape(2, 1, *hw)
        if hw != latent_hw:
            grid = F.interpolate(grid, size=latent_hw, mode="bilinear", align_corners=False)
        self.total = grid if self.total is None else self.total + grid
        self.count += 1

    def compute_mask(self) -> Optional[torch.Tensor]:
        """(1, 1, h, w) bool: union of the two rows' thresholded maps since the last step."""
        if self.total is None:
            return None
        maps = F.max_pool2d(self.total / self.count, kernel_size=3, stride=1, padding=1)
        maps = maps / maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
        return (maps > self.threshold).any(dim=0, keepdim=True)

    def __call__(self, event: StepEvent) -> None:
        """Step callback: blend the target row of the sampler's latents in place."""
        mask = self.compute_mask()
        self.total, self.count = None, 0
        if mask is None or event.step < self.start or event.x is None:
            return
        self.mask = mask
        x = event.x
        m = mask.to(x.device, x.dtype)
        x[1:].copy_(x[:1] + m * (x[1:] - x[:1]))


class PromptToPromptController(AttentionController):
    """Edit the target row's attention from the source row's (see module doc).

    mapper, alphas: (K,) from sdlab.attention.align; equalizer: (K,) per-token factors or None;
    cross_steps, self_steps: numbers of leading steps with cross / self replacement.
    """

    def __init__(self, mapper: torch.Tensor, alphas: torch.Tensor, *, cross_steps: int, self_steps: int,
                 equalizer: Optional[torch.Tensor] = None, self_max_queries: int = 256,
                 blend: Optional[LocalBlend] = None, cfg: Optional[bool] = None):
        super().__init__(batch_size=2, cfg=cfg)
        self.mapper, self.alphas, self.equalizer = mapper.long(), alphas.float(), equalizer
        self.cross_steps, self.self_steps, self.self_max_queries = cross_steps, self_steps, self_max_queries
        self.blend = blend

    def begin_loop(self) -> None:
        super().begin_loop()
        if self.blend is not None:
            self.blend.reset()

    def wants(self, layer: LayerInfo) -> bool:
        if layer.is_cross:
            return self.step < self.cross_steps or self.equalizer is not None or self.blend is not None
        return self.step < self.self_steps and layer.queries <= self.self_max_queries

    def _fit(self, t: torch.Tensor, keys: int, fill_identity: bool) -> torch.Tensor:
        """Extend a (K,) table to `keys` positions (prompts padded to a longer negative prompt)."""
        if len(t) >= keys:
            return t[:keys]
        extra = torch.arange(len(t), keys) if fill_identity else torch.ones(keys - len(t), dtype=t.dtype)
        return torch.cat([t, extra.to(t.dtype)])

    def edit_cross(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target's cross-attention (1, heads, q, K) edited from the source's `base`."""
        keys = target.shape[-1]
        new = target
        if self.step < self.cross_steps:
            mapper = self._fit(self.mapper, keys, True).to(target.device)
            alphas = self._fit(self.alphas, keys, False).to(target.device, target.dtype)
            new = alphas * base[..., mapper] + (1 - alphas) * target
        if self.equalizer is not None:
            new = new * self._fit(self.equalizer, keys, False).to(target.device, target.dtype)
        return new

    def forward(self, probs, is_cross, place_in_unet, layer):
        if probs.shape[0] != 2:
            raise RuntimeError(f"prompt-to-prompt expects 2 conditional rows [source, target], got {probs.shape[0]}")
        base, target = probs[:1], probs[1:]
        if not is_cross:
            return torch.cat([base, base])
        if self.blend is not None:
            self.blend.record(probs, self.resolution(layer.queries), self.latent_hw)
        return torch.cat([base, self.edit_cross(base, target)])

    def step_callback(self, event: StepEvent) -> None:
        """Pass to the sampler's callback: applies the local blend after each step."""
        if self.blend is not None:
            self.blend(event)
