"""Cross-attention maps as pictures: one heatmap per prompt token, overlaid on the image, and a
labelled grid (the "attention per word" figures of Hertz et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..errors import ConfigError
from ..io.images import make_grid
from ..text.tokens import inspect_tokens

# A perceptual dark-blue -> teal -> yellow ramp (viridis-like anchor colours), interpolated.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


@dataclass(frozen=True)
class TokenLabel:
    """A prompt token: its position in the encoder's sequence and its text."""

    position: int
    text: str


def token_labels(tokenizer, prompt: str) -> list[TokenLabel]:
    """The prompt's own tokens (no BOS/EOS/padding) at the positions the pipeline encodes them."""
    rows = inspect_tokens(tokenizer, prompt)
    return [TokenLabel(r["position"], r["token"]) for r in rows if not (r["bos"] or r["eos"] or r["padding"])]


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (..., 3) on the ramp above."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


def normalize(heat: torch.Tensor) -> torch.Tensor:
    """Scale a map to [0, 1] by its min and max (a flat map, up to rounding, becomes all zeros)."""
    lo, hi = heat.min(), heat.max()
    flat = hi - lo <= 1e-5 * max(float(hi.abs()), 1e-12)
    return torch.zeros_like(heat) if flat else (heat - lo) / (hi - lo)


def upsample(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A (h, w) map bilinearly resized to size (width, height) of an image."""
    w, h = size
    return F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def token_heatmaps(maps: torch.Tensor, positions: list[int], size: tuple[int, int]) -> list[torch.Tensor]:
    """For one image's maps (h, w, tokens): per position a [0, 1] heatmap at image `size` (w, h)."""
    if maps.ndim != 3:
        raise ConfigError(f"maps must be (h, w, tokens) for one image, got shape {tuple(maps.shape)}")
    bad = [p for p in positions if not 0 <= p < maps.shape[-1]]
    if bad:
        raise ConfigError(f"token positions {bad} are outside the {maps.shape[-1]} stored tokens")
    return [normalize(upsample(maps[..., p], size)) for p in positions]


def overlay(image: Image.Image, heat: torch.Tensor, alpha: float = 0.6) -> Image.Image:
    """The image blended with the colour-mapped heatmap (same size as the image)."""
    colour = Image.fromarray(colormap(heat.cpu().numpy()))
    return Image.blend(image.convert("RGB"), colour.resize(image.size), alpha)


def labelled(image: Image.Image, label: str, scale: int = 2) -> Image.Image:
    """The image enlarged `scale` times with `label` written in a strip underneath."""
    big = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    cell = Image.new("RGB", (big.width, big.height + 14), (0, 0, 0))
    cell.paste(big, (0, 0))
    ImageDraw.Draw(cell).text((2, big.height + 1), label, fill=(255, 255, 255))
    return cell


def attention_figure(image: Image.Image, maps: torch.Tensor, tokens: list[TokenLabel], *,
                     alpha: float = 0.6, cols: int | None = None) -> tuple[list[Image.Image], Image.Image]:
    """(one overlay per token, a grid of the image and the overlays labelled with their tokens)."""
    heats = token_heatmaps(maps, [t.position for t in tokens], image.size)
    overlays = [overlay(image, h, alpha) for h in heats]
    cells = [labelled(image, "image")] + [labelled(o, t.text) for o, t in zip(overlays, tokens)]
    return overlays, make_grid(cells, cols=cols or min(len(cells), 6))
