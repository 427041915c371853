"""VAE decoder fine-tuning, as Stability AI's sd-vae-ft-mse: only the decoder trains, on the
round trip of the training images (L1 + MSE), so the model draws fine detail of a new style
(thin stripes, text, faces) that the original decoder smooths away. The encoder is frozen:
latents, scaling factor and every UNet trained on them stay valid, and the result swaps into
any model of the family (`sdlab generate --vae`). Saves a diffusers AutoencoderKL folder
`OUTPUT/vae`."""

from __future__ import annotations

from pathlib import Path

import torch

from ..card import trained_prompt
from .base import Batch, DiffusionMethod
from .registry import MethodSpec
from .vae_decoder_options import DECLARATION, VaeDecoderOptions


class VaeDecoder(DiffusionMethod):
    name = "vae-decoder"
    train_vae_decoder = True
    uses_captions = False           # any image folder will do; metadata.jsonl is read when present

    def __init__(self, options: VaeDecoderOptions | None = None):
        self.options = options or VaeDecoderOptions()

    def prepare_modules(self) -> None:
        self.mark_decoder_trainable()

    def loss(self, batch: Batch) -> torch.Tensor:
        return self.decoder_loss(batch.pixels)

    @torch.no_grad()
    def validation_loss(self, pixels: torch.Tensor, text: str, seed: int) -> float:
        """The round-trip loss (L1 + MSE) of one held-out image, through the unwrapped VAE."""
        return self.decoder_loss(pixels[None], self.c.vae).item()

    def save(self, output_dir: Path) -> list[Path]:
        return [save_vae_folder(self.c.vae, Path(output_dir) / "vae")]


def save_vae_folder(vae, path: Path) -> Path:
    """The VAE as a diffusers AutoencoderKL folder (fp32 safetensors), written atomically."""
    from ...io.atomic import atomic_dir

    with atomic_dir(path) as tmp:
        torch.nn.Module.to(vae, dtype=torch.float32).save_pretrained(tmp, safe_serialization=True)
    return Path(path)


def usage(config, options: VaeDecoderOptions, saved: dict, out: Path) -> list[str]:
    return [f'sdlab generate "{trained_prompt(config)}" --vae {saved["vae"]}']


def footprint(c, options: VaeDecoderOptions, low: bool):
    """Estimated as a whole-UNet run, as the planner always has: an over-estimate, since only
    the decoder trains."""
    from ..memory import whole_unet_footprint

    return whole_unet_footprint(c, low, False)


SPEC = MethodSpec.declared(DECLARATION, method=VaeDecoder, usage=usage, footprint=footprint)
