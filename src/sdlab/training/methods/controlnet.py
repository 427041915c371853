"""ControlNet training (Zhang, Rao & Agrawala 2023): a trainable copy of the frozen UNet's
encoder (`ControlNetModel.from_unet`, its output convolutions zero-initialised so training starts
from the base model exactly) learns to steer the UNet from a condition image through residuals
added to the UNet's skip connections. The loss is the LDM objective with the residuals in.

The condition is derived from each training image (sdlab.control.preprocess: the object mask, the
render's edges or the colour-free layout), so any folder of world renders (`sdlab world export`)
trains it; with `--caption colour` the captions are rebuilt from the image by the oracle and name
only the objects' colours and the background, so the shape, position and size must come from the
control. Saves a diffusers folder `OUTPUT/controlnet` (`sdlab generate --controlnet`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...control.preprocess import preprocess
from ...errors import ConfigError
from .base import DiffusionMethod
from .controlnet_options import DECLARATION, ControlNetOptions
from .registry import MethodSpec

HINT_CHANNELS = (16, 32, 96, 256)     # diffusers' conditioning embedding (x8 for SD); cut to the VAE's factor


def colour_caption(image: Image.Image) -> str:
    """"a red object on a blue background" (two objects: "a red object and a green object ..."),
    read from the image by the world's oracle."""
    from ...world import oracle
    from ...world.captions import article

    reading = oracle.read(image, classify=False)
    things = " and ".join(article(f"{o.color} object") for o in reading.objects) or "nothing"
    return f"{things} on {article(reading.background)} background"


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """A (3, H, W) image in [-1, 1] as a PIL image."""
    arr = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


class ControlNetTraining(DiffusionMethod):
    name = "controlnet"
    net = None

    def __init__(self, options: ControlNetOptions | None = None):
        self.options = options or ControlNetOptions()
        self._images = None                 # the condition images of the batch being scored

    def prepare_modules(self) -> None:
        from ...control.loading import controlnet_from_unet

        scale = 2 ** (len(self.c.vae.config.block_out_channels) - 1)
        hint = HINT_CHANNELS[:int(math.log2(scale)) + 1]
        self.net = controlnet_from_unet(self.c.unet, conditioning_embedding_out_channels=hint)
        self.net.to(self.c.device).requires_grad_(True).train()
        self.net_train = self.net

    def trainable_modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def set_prepared(self, modules: list[torch.nn.Module]) -> None:
        self.net_train = modules[0]

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {f"controlnet.{n}": p for n, p in self.net.named_parameters() if p.requires_grad}

    def conditions(self, pixels: torch.Tensor) -> list[Image.Image]:
        return [preprocess(to_pil(p), self.options.condition) for p in pixels]

    def condition_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).to(self.c.device)

    def per_sample_loss(self, pixels, texts, seeds, latents=None):
        if self.options.caption == "colour":
            texts = [colour_caption(to_pil(p)) for p in pixels]
        self._images = self.condition_tensor(self.conditions(pixels))
        return super().per_sample_loss(pixels, texts, seeds, latents)

    @torch.no_grad()
    def validation_loss(self, pixels, text, seed, timesteps=4):
        if self.options.caption == "colour":
            text = colour_caption(to_pil(pixels))
        self._images = self.condition_tensor(self.conditions(pixels[None])).expand(timesteps, -1, -1, -1)
        net, self.net_train = self.net_train, self.net          # unwrapped: one process
        try:
            return super().validation_loss(pixels, text, seed, timesteps)
        finally:
            self.net_train = net

    def prediction_error(self, unet, latents, noise, timesteps, cond):
        return super().prediction_error(_WithControl(unet, self.net_train, self._images), latents, noise,
                                        timesteps, cond)

    def save(self, output_dir: Path) -> list[Path]:
        from ...io.atomic import atomic_dir

        path = Path(output_dir) / "controlnet"
        with atomic_dir(path) as tmp:
            self.net.save_pretrained(tmp, safe_serialization=True)
        return [path]


class _WithControl:
    """The frozen UNet called with the training ControlNet's residuals for `images`."""

    def __init__(self, unet, net, images: torch.Tensor):
        self.unet, self.net, self.images = unet, net, images

    def __call__(self, sample, timestep, encoder_hidden_states):
        down, mid = self.net(sample.float(), timestep, encoder_hidden_states=encoder_hidden_states.float(),
                             controlnet_cond=self.images, return_dict=False)
        dtype = sample.dtype
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         down_block_additional_residuals=[d.to(dtype) for d in down],
                         mid_block_additional_residual=mid.to(dtype))


def apply_checkpoint(pipe, state: dict, path: Path) -> None:
    raise ConfigError(f"'{path}' is a ControlNet checkpoint: it is not merged into a model; sample with "
                      "--control IMAGE:TYPE --controlnet OUTPUT/controlnet")


def usage(config, options: ControlNetOptions, saved: dict, out: Path) -> list[str]:
    return [f'sdlab generate "a red object on a white background" --control SCENE.png:{options.condition} '
            f'--controlnet {saved["controlnet"]}']


SPEC = MethodSpec.declared(
    DECLARATION, method=ControlNetTraining, resume_keeps=("condition",), apply_checkpoint=apply_checkpoint,
    usage=usage)
