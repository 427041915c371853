"""The weights-file layouts sdlab reads, and the one error for a file that is none of them
(rather than reading, say, a LoRA with unknown key names as a textual-inversion embedding)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from ..errors import ModelLoadError

RECOGNISED = ("LoRA in the diffusers/peft layout ('unet.<module>.lora_A.weight', 'text_encoder.<module>.lora_B.weight') "
              "or the kohya layout ('lora_unet_<module>.lora_down.weight', 'lora_te_<module>.alpha'); "
              "textual-inversion embedding as diffusers' {'<token>': vectors}, A1111's 'emb_params' (.safetensors) "
              "or 'string_to_param' (.pt); a model as a diffusers folder or an original-layout SD 1.x/2.x checkpoint")

# names of LoRA / LyCORIS parts, whatever the module names around them
_LORA_PART = re.compile(r"(?:^|[._])(?:lora_(?:down|up|A|B)|lora\.(?:down|up)|hada_w\d|lokr_w\d|dora_scale)(?:[._]|$)"
                        r"|\.alpha$")
_MODULE_WEIGHT = re.compile(r"\.(?:weight|bias)$")


def lora_like_key(keys: Iterable[str]) -> str | None:
    """The first key that names a LoRA part (down/up/alpha...), or None."""
    return next((k for k in keys if _LORA_PART.search(k)), None)


def module_weight_key(keys: Iterable[str]) -> str | None:
    """The first key that names a module's weight or bias (never an embedding's token), or None."""
    return next((k for k in keys if _MODULE_WEIGHT.search(k)), None)


def unrecognised_file(path: str | Path, key: str) -> ModelLoadError:
    """The error for a file whose tensor names match no layout sdlab reads."""
    what = "a LoRA's" if lora_like_key([key]) else "a model's"
    return ModelLoadError(f"'{path}' is an unrecognised file: its keys look like {what} but match no layout "
                          f"sdlab reads (e.g. '{key}'). Recognised: {RECOGNISED}")
