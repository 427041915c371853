"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet (and optionally the text
encoder) on a few images captioned with a rare identifier ("a sks shape"), with the
prior-preservation loss of `prior.py` on class images ("a shape") the model itself generated
before training. Saves the tuned model as a diffusers folder `OUTPUT/model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import DiffusionMethod, save_model_folder
from .prior import PriorOptions, PriorPreservation


@dataclass(frozen=True)
class DreamBoothOptions(PriorOptions):
    text_encoder: bool = False


class DreamBooth(PriorPreservation, DiffusionMethod):
    name = "dreambooth"
    train_unet = True

    def __init__(self, options: DreamBoothOptions | None = None):
        self.options = options or DreamBoothOptions(prior_preservation=False)
        self.train_text_encoder = self.options.text_encoder

    def prepare_modules(self) -> None:
        self.c.unet.requires_grad_(True)
        if self.train_text_encoder:
            self.c.text_encoder.requires_grad_(True)
        self.prepare_prior()

    def save(self, output_dir: Path) -> list[Path]:
        return [save_model_folder(self.c, Path(output_dir) / "model")]
