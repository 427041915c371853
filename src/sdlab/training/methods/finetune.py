"""Full fine-tuning on a captioned folder (the LDM objective, Rombach et al. 2022): the
UNet trains, the text encoder too unless frozen, and optionally the VAE decoder on the
images' round trip (see vae_decoder), for styles whose detail the original decoder loses.
With the loop's EMA the saved model is the EMA one; validation grids over training show how
far the model moved to the new data. Saves a diffusers folder `OUTPUT/model`."""

from __future__ import annotations

from pathlib import Path

from ..card import model_usage
from .base import DiffusionMethod, save_model_folder
from .finetune_options import DECLARATION, FineTuneOptions
from .registry import MethodSpec


class FineTune(DiffusionMethod):
    name = "finetune"
    train_unet = True

    def __init__(self, options: FineTuneOptions | None = None):
        self.options = options or FineTuneOptions()
        self.train_text_encoder = not self.options.freeze_text_encoder
        self.train_vae_decoder = self.options.train_vae_decoder

    def prepare_modules(self) -> None:
        self.c.unet.requires_grad_(True)
        if self.train_text_encoder:
            self.c.text_encoder.requires_grad_(True)
        if self.train_vae_decoder:
            self.mark_decoder_trainable()

    def loss(self, batch):
        loss = super().loss(batch)
        return loss + self.decoder_loss(batch.pixels) if self.train_vae_decoder else loss

    def save(self, output_dir: Path) -> list[Path]:
        return [save_model_folder(self.c, Path(output_dir) / "model")]


def footprint(c, options: FineTuneOptions, low: bool):
    from ..memory import whole_unet_footprint

    return whole_unet_footprint(c, low, not options.freeze_text_encoder)


SPEC = MethodSpec.declared(
    DECLARATION, method=FineTune, resume_keeps=("freeze_text_encoder", "train_vae_decoder"), usage=model_usage,
    footprint=footprint)
