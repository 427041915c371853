"""ControlNet training's options, torch-free (what `sdlab train controlnet --help` shows); the
method is controlnet.py."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import setting
from ...control.preprocess import PREPROCESSORS
from ...errors import ConfigError
from .registry import Declaration

CONDITIONS = tuple(p for p in PREPROCESSORS if p != "none")
CAPTIONS = ("colour", "data")


@dataclass(frozen=True)
class ControlNetOptions:
    condition: str = setting("mask", "what the ControlNet is conditioned on, derived from each image",
                             choices=lambda: CONDITIONS)
    caption: str = setting("colour", "colour: captions rebuilt by the oracle naming only the colours and the "
                           "background; data: the folder's own captions", choices=lambda: CAPTIONS)

    def __post_init__(self):
        for name, allowed in (("condition", CONDITIONS), ("caption", CAPTIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")


DECLARATION = Declaration(
    name="controlnet", options=ControlNetOptions,
    summary="train a ControlNet (mask, edges or layout of each image) beside the frozen model",
    # measured on the shipped v2 model, 2000 world renders, --condition mask, --cache-latents (docs/controlnet.md):
    # follows the control's shape, position and size in 0.03 of 32 scenes after 600 steps, 0.81 after 1700
    # (about 12 min of one CPU thread; the target is 0.90)
    recipe=dict(learning_rate=1e-4, adam_weight_decay=0.0, max_steps=1700, batch_size=8, caption_dropout=0.1))
