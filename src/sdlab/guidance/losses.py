"""Built-in differentiable losses for loss guidance: a target colour and a CLIP score.

Each returns one value per sample for images in [-1, 1], (B, 3, H, W).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import ConfigError

DEFAULT_CLIP = Path(__file__).resolve().parents[1] / "assets" / "shapes-clip"


def _rgb(target: Sequence[float]) -> torch.Tensor:
    values = list(target) if isinstance(target, (list, tuple)) else None
    if values is None or len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in values):
        raise ConfigError(f"colour target must be three numbers (R, G, B) in 0..255, got {target!r}")
    if not all(0 <= v <= 255 for v in values):
        raise ConfigError(f"colour target values must be in 0..255, got {target!r}")
    return torch.tensor(values, dtype=torch.float32) / 127.5 - 1


def color_loss(target: Sequence[float]):
    """Mean absolute distance of every pixel to the RGB colour `target` (0..255); the
    "blue loss" of the deep-dive notebook generalised to any colour."""
    rgb = _rgb(target)

    def loss(images: torch.Tensor) -> torch.Tensor:
        return (images - rgb.to(images).view(1, 3, 1, 1)).abs().mean(dim=(1, 2, 3))

    return loss


class ClipScorer:
    """Image/text embeddings of a local CLIP pair (default: the shipped shapes-world CLIP,
    which takes 64x64 images in [-1, 1]); nothing is downloaded."""

    def __init__(self, path: str | Path | None = None, device=None):
        from transformers import CLIPModel, CLIPTokenizer

        path = Path(path or DEFAULT_CLIP)
        if not (path / "config.json").exists():
            raise ConfigError(f"no CLIP model at '{path}' (a folder with config.json and a tokenizer)")
        self.model = CLIPModel.from_pretrained(path).eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.tokenizer = CLIPTokenizer.from_pretrained(path)
        self.size = self.model.config.vision_config.image_size

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts), padding=True, return_tensors="pt").to(self.device)
        return torch.nn.functional.normalize(_features(self.model.get_text_features(**ids)), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings for images in [-1, 1]; differentiable."""
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            images = torch.nn.functional.interpolate(images, size=(self.size, self.size), mode="bilinear",
                                                     antialias=True, align_corners=False)
        out = self.model.get_image_features(pixel_values=images.to(self.device))
        return torch.nn.functional.normalize(_features(out), dim=-1)

    def similarity(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its text (or one text for all)."""
        text = self.text_features(texts)
        return (self.image_features(images) * text.to(images.device)).sum(-1)


def _features(out) -> torch.Tensor:
    """Projected features from get_*_features (a tensor, or an output whose pooler_output
    holds them in transformers >= 5)."""
    return out if torch.is_tensor(out) else out.pooler_output


def clip_loss(text: str, scorer: ClipScorer | None = None):
    """1 - CLIP cosine similarity between the image and `text`."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"CLIP loss needs a non-empty text, got {text!r}")
    scorer = scorer or ClipScorer()

    def loss(images: torch.Tensor) -> torch.Tensor:
        return 1 - scorer.similarity(images, [text])

    return loss
