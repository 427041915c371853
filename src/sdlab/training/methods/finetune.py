"""Full fine-tuning on a captioned folder (the LDM objective, Rombach et al. 2022): the
UNet trains, the text encoder too unless frozen. With the loop's EMA the saved model is the
EMA one; validation grids over training show how far the model moved to the new data.
Saves a diffusers folder `OUTPUT/model`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import DiffusionMethod, save_model_folder


@dataclass(frozen=True)
class FineTuneOptions:
    freeze_text_encoder: bool = True


class FineTune(DiffusionMethod):
    name = "finetune"
    train_unet = True

    def __init__(self, options: FineTuneOptions | None = None):
        self.options = options or FineTuneOptions()
        self.train_text_encoder = not self.options.freeze_text_encoder

    def prepare_modules(self) -> None:
        self.c.unet.requires_grad_(True)
        if self.train_text_encoder:
            self.c.text_encoder.requires_grad_(True)

    def save(self, output_dir: Path) -> list[Path]:
        return [save_model_folder(self.c, Path(output_dir) / "model")]
