"""Prompt-to-prompt editing controllers (Hertz et al. 2022, "Prompt-to-Prompt Image Editing with
Cross Attention Control"), on a batch whose conditional rows are [sources..., targets...]
(k edit pairs sampled together; k = 1 for a single edit).

At every step the target's cross-attention maps are edited from the source's (the mapping of
sdlab.attention.align) while `step < cross_steps`, then multiplied per target token by the
`equalizer` (attention reweighting; applied at every step, here to the edited maps, so a
reweight without a swap scales the source's maps as in the paper). While `step < self_steps`,
self-attention layers with at most `self_max_queries` pixels take the source's maps as well
(the paper's 16x16 limit of SD's 64x64 latents). Unconditional rows are left alone, as in the
paper's code.

`LocalBlend` keeps everything outside the edited words' attention mask from the source: after
each step, x_target = x_source + mask * (x_target - x_source), where mask is the union over a
pair's two rows of the chosen words' maps (summed over words, averaged over layers and heads, max-pooled
3x3, divided by their maximum) above `threshold`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..callbacks import StepEvent
from .controller import AttentionController
from .processor import LayerInfo


class LocalBlend:
    """Mask from the cross-attention of chosen tokens, applied to the latents after each step.

    positions: per pair, (source token positions, target token positions); start: the first
    step that blends. Rows are [sources..., targets...], as in PromptToPromptController.
    """

    def __init__(self, positions: Sequence[tuple[list[int], list[int]]], threshold: float = 0.3, start: int = 0):
        self.rows = [list(src) for src, _ in positions] + [list(tgt) for _, tgt in positions]
        self.threshold, self.start = threshold, start
        self.reset()

    def reset(self) -> None:
        self.total: Optional[torch.Tensor] = None
        self.count = 0
        self.mask: Optional[torch.Tensor] = None

    def record(self, probs: torch.Tensor, hw: tuple[int, int], latent_hw: tuple[int, int]) -> None:
        """Add one cross-attention layer's maps (2k, heads, pixels, tokens) of rows [sources, targets]."""
        words = torch.stack([probs[r, ..., pos].float().mean(0).sum(-1) for r, pos in enumerate(self.rows)])
        grid = words.reshape(len(self.rows), 1, *hw)
        if hw != latent_hw:
            grid = F.interpolate(grid, size=latent_hw, mode="bilinear", align_corners=False)
        self.total = grid if self.total is None else self.total + grid
        self.count += 1

    def compute_mask(self) -> Optional[torch.Tensor]:
        """(k, 1, h, w) bool: per pair, the union of its two rows' thresholded maps since the last step."""
        if self.total is None:
            return None
        maps = F.max_pool2d(self.total / self.count, kernel_size=3, stride=1, padding=1)
        maps = maps / maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
        above = maps > self.threshold
        k = len(above) // 2
        return above[:k] | above[k:]

    def __call__(self, event: StepEvent) -> None:
        """Step callback: blend the target rows of the sampler's latents in place."""
        mask = self.compute_mask()
        self.total, self.count = None, 0
        if mask is None or event.step < self.start or event.x is None:
            return
        self.mask = mask
        x, k = event.x, len(mask)
        m = mask.to(x.device, x.dtype)
        x[k:].copy_(x[:k] + m * (x[k:] - x[:k]))


def _rows(t: Optional[torch.Tensor], dtype) -> Optional[torch.Tensor]:
    return None if t is None else (t[None] if t.ndim == 1 else t).to(dtype)


class PromptToPromptController(AttentionController):
    """Edit the target rows' attention from the source rows' (see module doc).

    For k pairs the conditional rows are [source_1..source_k, target_1..target_k].
    mapper, alphas: (k, K) or (K,) from sdlab.attention.align; equalizer: (k, K) / (K,) per-token
    factors or None; cross_steps, self_steps: numbers of leading steps with cross / self replacement;
    token_steps: (k, K) / (K,) per-target-token cross-replace step counts (the paper's per-word
    `cross_replace_steps`), or None for `cross_steps` everywhere.
    """

    def __init__(self, mapper: torch.Tensor, alphas: torch.Tensor, *, cross_steps: int, self_steps: int,
                 equalizer: Optional[torch.Tensor] = None, self_max_queries: int = 256,
                 blend: Optional[LocalBlend] = None, cfg: Optional[bool] = None,
                 token_steps: Optional[torch.Tensor] = None):
        self.mapper, self.alphas = _rows(mapper, torch.long), _rows(alphas, torch.float32)
        self.token_steps = _rows(token_steps, torch.float32)
        if self.token_steps is not None:
            cross_steps = max(cross_steps, int(self.token_steps.max().item()))
        self.equalizer = _rows(equalizer, torch.float32)
        self.pairs = self.mapper.shape[0]
        super().__init__(batch_size=2 * self.pairs, cfg=cfg)
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

    @staticmethod
    def _fit(t: torch.Tensor, keys: int, identity: bool) -> torch.Tensor:
        """Extend (k, K) tables to `keys` positions (prompts padded to a longer negative prompt)."""
        if t.shape[1] >= keys:
            return t[:, :keys]
        extra = torch.arange(t.shape[1], keys) if identity else torch.ones(keys - t.shape[1])
        return torch.cat([t, extra.to(t.dtype).expand(t.shape[0], -1)], dim=1)

    def edit_cross(self, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The targets' cross-attention (k, heads, q, K) edited from the sources' `base`."""
        keys, new = target.shape[-1], target
        if self.step < self.cross_steps:
            mapper = self._fit(self.mapper, keys, True).to(target.device)[:, None, None, :]
            alphas = self.alphas
            if self.token_steps is not None:
                alphas = alphas * (self.step < self.token_steps).to(alphas.dtype)
            alphas = self._fit(alphas, keys, False).to(target.device, target.dtype)[:, None, None, :]
            mapped = torch.gather(base, -1, mapper.expand(-1, *base.shape[1:3], -1))
            new = alphas * mapped + (1 - alphas) * target
        if self.equalizer is not None:
            new = new * self._fit(self.equalizer, keys, False).to(target.device, target.dtype)[:, None, None, :]
        return new

    def forward(self, probs, is_cross, place_in_unet, layer):
        k = self.pairs
        if probs.shape[0] != 2 * k:
            raise RuntimeError(f"prompt-to-prompt expects {2 * k} conditional rows [sources, targets], "
                               f"got {probs.shape[0]}")
        base, target = probs[:k], probs[k:]
        if not is_cross:
            return torch.cat([base, base])
        if self.blend is not None:
            self.blend.record(probs, self.resolution(layer.queries), self.latent_hw)
        return torch.cat([base, self.edit_cross(base, target)])

    def step_callback(self, event: StepEvent) -> None:
        """Pass to the sampler's callback: applies the local blend after each step."""
        if self.blend is not None:
            self.blend(event)
