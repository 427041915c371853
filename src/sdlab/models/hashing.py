"""Model hashes as AUTOMATIC1111 writes them in infotext ("Model hash: 6ce0161689")."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sdlab.errors import ModelLoadError

# Weight files of a diffusers UNet folder, in order of preference.
UNET_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Full hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def short_hash(path: str | Path) -> str:
    """A1111's shorthash of an embedding file ("TI hashes" in infotext): the first 12 hex
    digits of the file's sha256."""
    return sha256_file(path)[:12]


def safetensors_data_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a .safetensors file's tensor data: the bytes after the 8-byte header length
    and the JSON header (kohya-ss' "addnet" hash, which A1111 uses for LoRA files; editing the
    metadata does not change it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"'{path}' is not a safetensors file (shorter than its 8-byte header length)")
        fh.seek(8 + int.from_bytes(head, "little"))
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def lora_short_hash(path: str | Path) -> str:
    """A1111's shorthash of a LoRA file ("Lora hashes" in infotext): the first 12 hex digits of
    the tensor-data sha256 for .safetensors (safetensors_data_sha256), of the file's sha256 otherwise."""
    is_safetensors = Path(path).suffix.lower() == ".safetensors"
    return (safetensors_data_sha256(path) if is_safetensors else sha256_file(path))[:12]


def weights_file(component: str | Path, names=UNET_WEIGHT_FILES) -> Path | None:
    """The first of `names` that is a file in a diffusers component folder (unet/, vae/), or None."""
    return next((Path(component) / n for n in names if (Path(component) / n).is_file()), None)


def unet_weights_file(folder: str | Path) -> Path | None:
    """The UNet weight file of a diffusers folder (sharded weights: their index file), or None."""
    return weights_file(Path(folder) / "unet", UNET_WEIGHT_FILES + ("diffusion_pytorch_model.safetensors.index.json",))


def model_hash(path: str | Path) -> str:
    """A1111 short hash: the first 10 hex digits of the sha256 of the checkpoint file.

    For a diffusers folder the UNet weight file is hashed. Nothing is cached on disk.
    """
    p = Path(path)
    if p.is_dir():
        weights = unet_weights_file(p)
        if weights is None:
            raise ModelLoadError(f"cannot hash model folder '{p}': no unet weights file found")
        p = weights
    elif not p.is_file():
        raise ModelLoadError(f"cannot hash model '{p}': no such file or folder")
    return sha256_file(p)[:10]
