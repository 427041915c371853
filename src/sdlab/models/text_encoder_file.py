"""CLIP text-encoder weights saved so that every transformers version loads them.

transformers 5 flattened `CLIPTextModel` (its modules are `embeddings.`, `encoder.`,
`final_layer_norm.`) and saves its keys so; transformers 4.x keeps them under `text_model.`
and loads a file without that prefix as random weights, with only a warning. transformers 5
reads the prefixed keys too, so sdlab writes every text encoder with `text_model.` keys, as
Stable Diffusion's own `text_encoder/model.safetensors` has them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io.atomic import atomic_save

PREFIX = "text_model."
# the top-level modules of a transformers 5 CLIPTextModel, which go under `text_model.`
BARE_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")
INDEX = "model.safetensors.index.json"


def portable_key(key: str) -> str:
    """`encoder.layers.0...` -> `text_model.encoder.layers.0...`; other keys stay."""
    return PREFIX + key if key.startswith(BARE_ROOTS) else key


def portable_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel state dict (any transformers version) with `text_model.` keys."""
    return {portable_key(k): v for k, v in state.items()}


def rewrite_portable(folder: str | Path) -> list[Path]:
    """Rename the keys of a saved text encoder's safetensors files (and the shard index) in
    `folder` to `text_model.` keys, in place and atomically; tensors are not changed."""
    folder, done = Path(folder), []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            tensors = {portable_key(k): f.get_tensor(k) for k in f.keys()}
        mode = path.stat().st_mode & 0o777
        done.append(atomic_save(path, lambda tmp, t=tensors, m=metadata: save_file(t, str(tmp), metadata=m)))
        os.chmod(path, mode)            # a rewrite keeps the file's permissions
    index = folder / INDEX
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {portable_key(k): v for k, v in data.get("weight_map", {}).items()}
        atomic_save(index, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2), encoding="utf-8"))
    return done


def save_text_encoder(text_encoder, folder: str | Path) -> Path:
    """`text_encoder.save_pretrained(folder)` (config.json + model.safetensors) with
    `text_model.` keys, so transformers 4.x and 5.x both load it. Use this for every CLIP
    text encoder sdlab writes (a pipeline saved whole: rewrite_portable(dir / "text_encoder"))."""
    folder = Path(folder)
    text_encoder.save_pretrained(folder, safe_serialization=True)
    rewrite_portable(folder)
    return folder
