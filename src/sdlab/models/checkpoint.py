"""Reading single-file SD checkpoints safely and telling SD 1.x from 2.x, epsilon from v.

The original (CompVis/Stability "LDM") layout keeps the UNet under ``model.diffusion_model.``,
the VAE under ``first_stage_model.`` and the text encoder under ``cond_stage_model.``:
``cond_stage_model.transformer.`` is OpenAI CLIP ViT-L/14 (SD 1.x), ``cond_stage_model.model.``
is OpenCLIP ViT-H/14 (SD 2.x).
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch

from sdlab.errors import ConfigError, ModelLoadError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
CROSS_DIM = {"sd1": 768, "sd2": 1024}
PREDICTION_TYPES = {"epsilon": "epsilon", "eps": "epsilon", "v": "v_prediction",
                    "v_prediction": "v_prediction"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file, or a ``.ckpt`` with ``torch.load(weights_only=True)`` only."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            from safetensors.torch import load_file
            state = load_file(str(p))
        except Exception as exc:  # safetensors raises several types for a bad header
            reason = first_line(exc)
            raise ModelLoadError(f"'{p}' is not a valid safetensors file: {reason}") from exc
    elif suffix in PICKLE_SUFFIXES:
        state = load_pickled(p)
    else:
        raise ModelLoadError(f"unknown model file type '{p.suffix}' for '{p}'; allowed: a "
                             "diffusers folder, .safetensors, .ckpt")
    return unwrap_state_dict(state, p)


PICKLE_RULE = "only tensors are read from .ckpt/.pt/.bin files; convert it to safetensors"


def load_pickled(p: Path) -> dict:
    """A pickled file read with torch.load(weights_only=True): tensors and plain containers only,
    memory-mapped when zipped. Anything else is refused, never unpickled."""
    mmap = zipfile.is_zipfile(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pickle-protocol chatter
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:   # torch's text advises unsafe loading: never passed on
        raise refused_pickle(p, str(exc)) from None
    except Exception as exc:
        raise ModelLoadError(f"'{p}' is not a valid {p.suffix or 'pickle'} file: {first_line(exc)}") from exc


# what torch's weights-only unpickler says (in its wordings up to 2.13) when a pickle holds an object
_OBJECT = re.compile(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")


def refused_pickle(p: Path, torch_message: str) -> ModelLoadError:
    """The error for a pickle the weights-only reader refused, whatever torch's wording."""
    found = _OBJECT.search(torch_message)
    if found:
        return ModelLoadError(f"refusing to load a pickle that holds Python objects: '{p}' holds "
                              f"{found.group(1) or found.group(2)} ({PICKLE_RULE})")
    opcode = re.search(r"Unsupported operand (\d+)", torch_message)
    if opcode:
        name = next((op.name for op in pickletools.opcodes if op.code == chr(int(opcode.group(1)))), opcode.group(1))
        reason = f"its pickle uses opcode {name}, which torch.save does not write (a plain or cut pickle?)"
    else:
        lines = [ln.strip() for ln in torch_message.splitlines()
                 if ln.strip() and "weights_only" not in ln and not ln.startswith("Check the documentation")]
        reason = lines[-1] if lines else "it is not a tensors-only pickle"
    return ModelLoadError(f"'{p}' is not a valid {p.suffix or 'pickle'} file: {reason} ({PICKLE_RULE})")


def unwrap_state_dict(state, p: Path) -> dict[str, torch.Tensor]:
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"'{p}' does not hold a state dict (found {type(state).__name__})")
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        raise ModelLoadError(f"'{p}' holds no tensors")
    return tensors


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def cross_attention_dim(state: dict[str, torch.Tensor]) -> int | None:
    """Width of the text conditioning the UNet attends to (768 for SD 1.x, 1024 for SD 2.x)."""
    for key, value in state.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return int(value.shape[-1])
    return None


def detect_family(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> str:
    """Return "sd1" or "sd2" from the key layout, or raise ModelLoadError."""
    keys = state.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise ModelLoadError(f"'{path}' looks like an SDXL checkpoint; only SD 1.x / 2.x "
                             "are supported")
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    has_vae = any(k.startswith(VAE_PREFIX) for k in keys)
    has_clip = any(k.startswith(CLIP_PREFIX) for k in keys)
    has_openclip = any(k.startswith(OPENCLIP_PREFIX) for k in keys)
    if not (has_unet and has_vae and (has_clip or has_openclip)):
        missing = [n for n, ok in (("UNet", has_unet), ("VAE", has_vae),
                                   ("text encoder", has_clip or has_openclip)) if not ok]
        raise ModelLoadError(f"'{path}' matches neither SD 1.x nor SD 2.x: no "
                             f"{', '.join(missing)} weights in the original layout")
    return "sd1" if has_clip else "sd2"


def check_cross_dim(state: dict[str, torch.Tensor], family: str, path: str | Path) -> None:
    """Raise unless the UNet's cross-attention width is the one of the shipped ``family`` config."""
    dim = cross_attention_dim(state)
    if dim != CROSS_DIM[family]:
        raise ModelLoadError(
            f"'{path}' matches neither SD 1.x nor SD 2.x: cross-attention width {dim}, expected "
            f"{CROSS_DIM[family]} for its {'CLIP' if family == 'sd1' else 'OpenCLIP'} text encoder")


def normalize_prediction_type(value: str) -> str:
    """"epsilon"/"eps" -> "epsilon", "v"/"v_prediction" -> "v_prediction"; else ConfigError."""
    key = str(value).strip().lower()
    if key not in PREDICTION_TYPES:
        raise ConfigError(f"unknown prediction_type {value!r}; allowed: epsilon, v_prediction")
    return PREDICTION_TYPES[key]


def sidecar_prediction_type(path: str | Path) -> str | None:
    """Read ``parameterization: "v"`` from an A1111-style ``<name>.yaml`` beside the checkpoint."""
    yaml_path = Path(path).with_suffix(".yaml")
    if not yaml_path.is_file():
        return None
    text = yaml_path.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"^\s*parameterization:\s*[\"']?(\w+)[\"']?", text, re.MULTILINE)
    if match is None:
        return "epsilon"
    return "v_prediction" if match.group(1).lower() == "v" else "epsilon"


@torch.no_grad()
def probe_v_prediction(unet, cross_dim: int) -> bool:
    """Heuristic from A1111's loader: run the UNet once on a flat latent at t=999.

    An epsilon model predicts roughly its (noise-like) input there, a v model a strongly
    negative offset from it; a mean of ``output - input`` below -1 means v-prediction.
    """
    param = next(unet.parameters())
    dtype = torch.float32 if param.device.type == "cpu" else param.dtype
    original = param.dtype
    torch.nn.Module.to(unet, dtype)  # plain cast: diffusers' own .to() warns about dtypes
    try:
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=param.device, dtype=dtype)
        cond = torch.full((1, 2, cross_dim), 0.5, device=param.device, dtype=dtype)
        t = torch.tensor([999], device=param.device)
        out = unet(x, t, encoder_hidden_states=cond).sample
        if out.shape[1] != x.shape[1]:
            return False
        return (out.float() - x.float()).mean().item() < -1.0
    finally:
        torch.nn.Module.to(unet, original)
