"""Previews for the progress stream: the predicted clean image x0 of the first batch row,
decoded by the VAE (small here: the latent is 1/8 of the image side) and sent as a data URL."""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image

MAX_PREVIEW_SIDE = 256


def preview_image(pipe, denoised: torch.Tensor) -> Image.Image:
    """Decode x0 of the first row; downscaled so that its longer side is at most 256 px."""
    img = pipe.decode_images(denoised[:1])[0]
    if max(img.size) > MAX_PREVIEW_SIDE:
        img.thumbnail((MAX_PREVIEW_SIDE, MAX_PREVIEW_SIDE))
    return img


def data_url(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def preview_data_url(pipe, denoised: torch.Tensor) -> str:
    return data_url(preview_image(pipe, denoised))
