"""What one control is: a ControlNet, its image, its weight and when in the loop it acts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from .preprocess import check_type, preprocess

MAX_SCALE = 2.0     # A1111 ControlNet's Control Weight slider


def _number(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ConfigError(f"control {name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Control:
    """One ControlNet unit (A1111's ControlNet extension).

    image: the control image (PIL), turned into the condition by `module` ("none": as is, "mask",
    "edges", "layout"; sdlab.control.preprocess). model: a loaded `ControlNetModel`, or a folder
    or file path (Pipeline.load_controlnet loads and caches it). scale: the weight, in [0, 2];
    start / end: the fractions of the steps it acts on (A1111's Guidance Start / End, diffusers'
    control_guidance_start / end); guess_mode: no prompt for the ControlNet, which then acts on
    the conditional half of classifier-free guidance only (A1111's "ControlNet is more important")."""

    image: Image.Image
    model: Any
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False
    module: str = "none"

    def __post_init__(self):
        if not isinstance(self.image, Image.Image):
            raise ConfigError(f"a control image must be a PIL image, got {type(self.image).__name__}")
        if self.model is None:
            raise ConfigError("a control needs a ControlNet (a ControlNetModel, a folder or a file; --controlnet)")
        _number("scale", self.scale, 0.0, MAX_SCALE)
        _number("start", self.start, 0.0, 1.0)
        _number("end", self.end, 0.0, 1.0)
        if self.start >= self.end:
            raise ConfigError(f"control start ({self.start:g}) must be below its end ({self.end:g})")
        if not isinstance(self.guess_mode, bool):
            raise ConfigError(f"control guess_mode must be true or false, got {self.guess_mode!r}")
        check_type(self.module)

    def condition(self, width: int, height: int) -> torch.Tensor:
        """The preprocessed image at (width, height) as a (1, 3, H, W) tensor in [0, 1], as
        diffusers' control image processor gives it (RGB, Lanczos resize, no normalisation)."""
        image = preprocess(self.image, self.module)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def active(step: int, total: int, start: float, end: float) -> bool:
    """Whether a control acts on (0-based) step `step` of `total`: diffusers' controlnet_keep,
    off while step/total < start or (step+1)/total > end."""
    return not (step / total < start or (step + 1) / total > end)


@dataclass
class LoadedControl:
    """A Control with its ControlNetModel loaded, its condition tensor and its infotext record."""

    control: Control
    net: Any
    image: Optional[torch.Tensor] = None     # (1, 3, H, W) in [0, 1], at the size being sampled
    name: str = "controlnet"
    hash: Optional[str] = None

    @property
    def guess(self) -> bool:
        return self.control.guess_mode or bool(getattr(self.net.config, "global_pool_conditions", False))

    def record(self) -> dict:
        c = self.control
        return {"module": c.module, "model": self.name, "hash": self.hash, "weight": c.scale,
                "guidance_start": c.start, "guidance_end": c.end, "guess_mode": self.guess}


def check_fits(net, name: str, vae_scale: int) -> None:
    """A ConfigError unless `net` shrinks its control image by the VAE's factor (so its features
    meet the latents: 8 for SD, `conditioning_embedding_out_channels` gives 2^(n-1))."""
    factor = 2 ** (len(net.config.conditioning_embedding_out_channels) - 1)
    if factor != vae_scale:
        raise ConfigError(f"ControlNet '{name}' shrinks its control image by {factor} but this model's latents are "
                          f"1/{vae_scale} of the image: it belongs to another model")


def infotext_fields(loaded: list[LoadedControl]) -> dict[str, str]:
    """A1111 ControlNet extension's infotext: `ControlNet 0: "Module: ..., Model: ..., Weight: ..."`."""
    out = {}
    for i, lc in enumerate(loaded):
        r = lc.record()
        model = f"{r['model']} [{r['hash']}]" if r["hash"] else r["model"]
        mode = "ControlNet is more important" if r["guess_mode"] else "Balanced"
        out[f"ControlNet {i}"] = (f"Module: {r['module']}, Model: {model}, Weight: {r['weight']:g}, "
                                  f"Resize Mode: Just Resize, Guidance Start: {r['guidance_start']:g}, "
                                  f"Guidance End: {r['guidance_end']:g}, Control Mode: {mode}")
    return out


def model_name(path: Path) -> str:
    """The name A1111 shows for a ControlNet: the file's stem, or the folder's name."""
    return path.stem if path.is_file() else path.name
