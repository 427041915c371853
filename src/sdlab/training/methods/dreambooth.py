"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet (and optionally the text
encoder) on a few images captioned with a rare identifier ("a sks shape"), with the
prior-preservation loss of `prior.py` on class images ("a shape") the model itself generated
before training. Saves the tuned model as a diffusers folder `OUTPUT/model`.
"""

from __future__ import annotations

from pathlib import Path

from ..card import model_usage
from .base import DiffusionMethod, save_model_folder
from .dreambooth_options import DECLARATION, DreamBoothOptions
from .prior import PriorPreservation
from .registry import MethodSpec


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


def footprint(c, options: DreamBoothOptions, low: bool):
    from ..memory import whole_unet_footprint

    return whole_unet_footprint(c, low, options.text_encoder, samples=2 if options.prior_preservation else 1)


SPEC = MethodSpec.declared(
    DECLARATION, method=DreamBooth, resume_keeps=("text_encoder",), usage=model_usage, footprint=footprint)
