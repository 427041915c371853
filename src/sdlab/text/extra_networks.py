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


def with_lora_tags(prompt: str, loras) -> str:
    """`prompt` with a `<lora:NAME:SCALE>` tag added for each applied LoRA record ({"name",
    "scale"}) it does not tag yet: A1111 applies LoRAs only from tags, so its PNG Info then
    reproduces an image made with `--lora FILE:SCALE`."""
    tagged = {name for name, _ in lora_tags(prompt)}
    extra = [f"<lora:{r['name']}:{r['scale']:g}>" for r in loras if r["name"] not in tagged]
    return " ".join([prompt, *extra]) if extra else prompt


def tags_of_prompts(prompts) -> list[tuple[str, float]]:
    """The LoRA tags of prompts that sample together (prompt-to-prompt pairs, interpolation
    ends): each name once; a name with two different weights is refused."""
    weights: dict[str, float] = {}
    for prompt in prompts:
        for name, weight in lora_tags(prompt):
            if weights.setdefault(name, weight) != weight:
                raise ConfigError(f"<lora:{name}> has weight {weights[name]:g} in one prompt and {weight:g} in "
                                  "another; these prompts are sampled together, so give it one weight")
    return list(weights.items())


def find_lora(name: str, folders: list[Path]) -> Path:
    """NAME.safetensors in the first of `folders` that has it."""
    if not folders:
        raise ConfigError(f"<lora:{name}> needs a folder of LoRA files to look in (--lora-dir DIR)")
    for folder in folders:
        path = Path(folder) / f"{name}.safetensors"
        if _inside(path, folder):
            return path
    raise ConfigError(f"<lora:{name}>: no {name}.safetensors in {', '.join(str(f) for f in folders)}")


def lora_names(folders) -> list[str]:
    """The NAMEs a `<lora:NAME:W>` tag can use: the .safetensors files of `folders`, first wins."""
    names: dict[str, None] = {}
    for folder in folders:
        for path in sorted(Path(folder).glob("*.safetensors")):
            if _inside(path, folder):
                names.setdefault(path.stem)
    return list(names)


def _inside(path: Path, folder) -> bool:
    """A file that is really in `folder` (not a name or link that leads out of it)."""
    return path.is_file() and path.resolve().parent == Path(folder).resolve()
