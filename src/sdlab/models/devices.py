"""Device and precision choice: ``auto`` picks cuda > mps > cpu, and fp16 on accelerators."""

from __future__ import annotations

import torch

from sdlab.errors import ConfigError

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = ("auto", "fp32", "fp16", "bf16")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """Turn ``None``/"auto"/"cpu"/"cuda"/"cuda:1"/"mps" into an available ``torch.device``."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or str(name).strip().lower() in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if not isinstance(name, str):
        raise ConfigError(f"device must be a string, got {type(name).__name__}; "
                          f"allowed: {', '.join(DEVICE_NAMES)}")
    key = name.strip().lower()
    kind, _, index = key.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device {name!r}; allowed: {', '.join(DEVICE_NAMES)}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here; "
                              "allowed: auto, cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: {torch.cuda.device_count()} "
                              "CUDA device(s) found")
    if kind == "mps" and not _mps_available():
        raise ConfigError(f"device {name!r} requested but MPS is not available here; "
                          "allowed: auto, cpu")
    return torch.device(key)


def resolve_dtype(name: str | torch.dtype | None = None,
                  device: str | torch.device | None = None) -> torch.dtype:
    """Turn None/"auto"/"fp32"/"fp16"/"bf16" into a dtype; auto: fp16 on cuda/mps, else fp32."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ConfigError(f"unsupported dtype {name}; allowed: {', '.join(DTYPE_NAMES)}")
        return name
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "auto")):
        kind = torch.device(device).type if device is not None else "cpu"
        return torch.float16 if kind in ("cuda", "mps") else torch.float32
    if not isinstance(name, str) or name.strip().lower() not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPE_NAMES)}")
    return DTYPES[name.strip().lower()]
