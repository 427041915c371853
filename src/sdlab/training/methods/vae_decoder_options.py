"""VAE decoder fine-tuning's options (none), torch-free (what `sdlab train vae-decoder --help`
shows); the method is vae_decoder.py."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import Declaration


@dataclass(frozen=True)
class VaeDecoderOptions:
    pass


DECLARATION = Declaration(
    name="vae-decoder", options=VaeDecoderOptions,
    summary="tune the VAE decoder on the images' round trip (as sd-vae-ft-mse), for detail the decoder loses",
    recipe=dict(learning_rate=1e-4, adam_weight_decay=0.0, max_steps=500, caption_dropout=0.0))
