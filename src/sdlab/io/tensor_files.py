"""Reading .safetensors files (Hugging Face safetensors) with one clear error for a file that
is missing or not a safetensors file."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..errors import ModelLoadError


@contextmanager
def _opened(path: Path, what: str):
    from safetensors import safe_open

    if not path.is_file():
        raise ModelLoadError(f"{what} '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except Exception as exc:  # safetensors raises its own error types
        raise ModelLoadError(f"cannot read {what} '{path}': {exc}") from exc


def read_safetensors(path: str | Path, what: str = "file") -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors file; `what` names it in errors ("LoRA file")."""
    with _opened(Path(path), what) as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def safetensors_keys(path: str | Path, what: str = "file") -> list[str]:
    """The tensor names of a .safetensors file, without reading the tensors."""
    with _opened(Path(path), what) as f:
        return list(f.keys())


def safetensors_shapes(path: str | Path, what: str = "file") -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a .safetensors file, without reading the tensors."""
    with _opened(Path(path), what) as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
