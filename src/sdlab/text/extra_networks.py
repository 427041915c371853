"""AUTOMATIC1111's LoRA tags in prompts: `<lora:NAME:WEIGHT>` applies the file NAME.safetensors
from the LoRA folders at WEIGHT (default 1) while that prompt is sampled. The tag is removed
from the text before it is encoded; the prompt keeps it in the image metadata, so A1111 and
sdlab read the same infotext back."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError

LORA_TAG = re.compile(r"<lora:([^:<>]*)(?::([^<>]*))?>")


def strip_lora_tags(prompt: str) -> str:
    return re.sub(r"\s{2,}", " ", LORA_TAG.sub("", prompt)).strip()


def lora_tags(prompt: str) -> list[tuple[str, float]]:
    """[(NAME, WEIGHT)] of the prompt's `<lora:NAME:WEIGHT>` tags, in order."""
    tags = []
    for m in LORA_TAG.finditer(prompt):
        name, weight = m.group(1).strip(), m.group(2)
        if not name:
            raise ConfigError(f"{m.group(0)}: a LoRA tag needs a name, as in <lora:my-lora:0.8>")
        try:
            tags.append((name, 1.0 if weight is None else float(weight)))
        except ValueError:
            raise ConfigError(f"{m.group(0)}: the weight must be a number, as in <lora:{name}:0.8>") from None
    return tags


def find_lora(name: str, folders: list[Path]) -> Path:
    """NAME.safetensors in the first of `folders` that has it."""
    if not folders:
        raise ConfigError(f"<lora:{name}> needs a folder of LoRA files to look in (sdlab generate --lora-dir DIR)")
    for folder in folders:
        path = Path(folder) / f"{name}.safetensors"
        if path.is_file() and path.resolve().parent == Path(folder).resolve():
            return path
    raise ConfigError(f"<lora:{name}>: no {name}.safetensors in {', '.join(str(f) for f in folders)}")
