"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet (and optionally the text
encoder) on a few images captioned with a rare identifier ("a sks shape"), with the
prior-preservation loss of `prior.py` on class images ("a shape") the model itself generated
before training. Saves the tuned model as a diffusers folder `OUTPUT/model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...config import setting
from ..card import model_usage
from .base import DiffusionMethod, save_model_folder
from .prior import PriorOptions, PriorPreservation
from .registry import MethodSpec


@dataclass(frozen=True)
class DreamBoothOptions(PriorOptions):
    text_encoder: bool = setting(False, "also tune the text encoder", flag="--train-text-encoder")


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


SPEC = MethodSpec(
    name="dreambooth", method=DreamBooth, options=DreamBoothOptions,
    summary="fine-tune the UNet on a few images of a subject, with prior preservation (Ruiz et al. 2023)",
    recipe=dict(learning_rate=5e-6, adam_weight_decay=1e-2, max_steps=500, caption_dropout=0.0),
    resume_keeps=("text_encoder",), usage=model_usage, footprint=footprint)
