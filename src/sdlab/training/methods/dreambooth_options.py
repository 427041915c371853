"""DreamBooth's options, torch-free (what `sdlab train dreambooth --help` shows); the method is
dreambooth.py."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting
from .prior_options import PriorOptions
from .registry import Declaration


@dataclass(frozen=True)
class DreamBoothOptions(PriorOptions):
    text_encoder: bool = setting(False, "also tune the text encoder", flag="--train-text-encoder")


DECLARATION = Declaration(
    name="dreambooth", options=DreamBoothOptions,
    summary="fine-tune the UNet on a few images of a subject, with prior preservation (Ruiz et al. 2023)",
    # measured on the shipped model, 8 images of an unseen shape, with the prior (benchmarks/personalize_defaults.py,
    # docs/results.md); a UNet the size of SD 1.5's is usually tuned at 5e-6 (diffusers' script)
    recipe=dict(learning_rate=1e-4, adam_weight_decay=1e-2, max_steps=2000, caption_dropout=0.0))
