"""Full fine-tuning's options, torch-free (what `sdlab train finetune --help` shows); the method is
finetune.py."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting
from .registry import Declaration


@dataclass(frozen=True)
class FineTuneOptions:
    freeze_text_encoder: bool = setting(True, "also tune the text encoder (frozen otherwise)",
                                        flag="--train-text-encoder")
    train_vae_decoder: bool = setting(False, "also tune the VAE decoder on the images' round trip (for fine detail "
                                      "the decoder loses)")


DECLARATION = Declaration(
    name="finetune", options=FineTuneOptions,
    summary="fine-tune the whole UNet (and optionally the text encoder, VAE decoder) on a captioned folder",
    recipe=dict(learning_rate=1e-5, adam_weight_decay=1e-2, max_steps=500, caption_dropout=0.0))
