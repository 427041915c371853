"""Degradations that mimic generated images (blur, noise, colour shift, soft edges)."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter


def degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random mix of Gaussian blur, additive noise, a per-channel colour shift and
    down/up-sampling, of the strength seen in VAE-decoded samples."""
    img = image
    if rng.random() < 0.7:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.5:
        small = img.resize((40, 40), Image.Resampling.BILINEAR)
        img = small.resize(image.size, Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32)
    nrng = np.random.default_rng(rng.randrange(2**32))
    arr = arr + np.array([rng.uniform(-15, 15) for _ in range(3)], dtype=np.float32)
    arr = arr + nrng.normal(0, rng.uniform(0, 8), arr.shape)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
