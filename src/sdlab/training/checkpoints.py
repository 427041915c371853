"""Resumable training checkpoints in safe formats, written atomically, the last K kept.

A checkpoint is a folder `checkpoints/step-NNNNNNNN/` with `state.safetensors` (every tensor:
trainable weights, optimizer moments, EMA, RNG states) and `state.json` (the nesting, with
tensors replaced by references, and plain values). It appears by one rename of a complete
temporary folder; older ones are pruned only after the new one is in place.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..io.atomic import atomic_dir

STEP_DIR = re.compile(r"^step-(\d+)$")


def pack(obj, tensors: dict, prefix: str = "t"):
    """Nested dict/list/tuple with tensors and numpy arrays -> JSON-able skeleton; the
    tensors go into `tensors` under generated keys."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError("checkpoint dict keys must be str or int")
        return {"__dict__": [[k, pack(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [pack(v, tensors, prefix) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unpack(obj, tensors: dict):
    """Inverse of `pack`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        if "__dict__" in obj:
            return {k: unpack(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [unpack(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(unpack(v, tensors) for v in obj["__tuple__"])
        if "__dtype__" in obj:
            return getattr(torch, obj["__dtype__"])
    return obj


def rng_state() -> dict:
    """Global RNG states of python, numpy and torch (CPU, and CUDA when present)."""
    state = {"python": _py_state(random.getstate()), "numpy": list(np.random.get_state()),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, state: dict, keep_last: int) -> Path:
    """Write `state` as checkpoint `step` under `root`, then prune to the last `keep_last`."""
    root = Path(root)
    path = root / f"step-{step:08d}"
    tensors: dict = {}
    skeleton = pack(state, tensors)
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, "state": skeleton}))
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def resolve_resume(resume: str | Path | None, root: Path) -> Path | None:
    """`latest` -> newest checkpoint under `root` (None if there is none yet); a path -> it;
    None -> None, refused when `root` holds checkpoints (another run's)."""
    if resume is None:
        found = list_checkpoints(root)
        if found:   # a fresh start would overwrite that run's results and rotate its checkpoints away
            raise ConfigError(f"'{root.parent}' already holds a run (checkpoint {found[-1].name}); continue it "
                              "with --resume latest, or give another --output-dir")
        return None
    if str(resume) == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ConfigError(f"resume: '{path}' is not a checkpoint folder (no state.json); "
                          "give 'latest' or a checkpoints/step-NNNNNNNN folder")
    return path


def checkpoint_settings(path: Path, keys: tuple[str, ...] = ("method", "options", "model")) -> dict:
    """The plain (tensor-free) entries `keys` of checkpoint `path`'s state, by default those a resume
    must match (method, options, base model), read from state.json alone: cheap, before any model loads."""
    meta = json.loads((Path(path) / "state.json").read_text())
    entries = dict(meta["state"].get("__dict__", []))
    return {k: unpack(entries[k], {}) for k in keys if k in entries}


def load_checkpoint(path: Path) -> tuple[int, dict]:
    """(step, state) of the checkpoint folder `path`."""
    path = Path(path)
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    return int(meta["step"]), unpack(meta["state"], tensors)


def trained_weights(state: dict) -> dict:
    """A checkpoint state's trainable weights by name, the EMA ones when the run kept an EMA
    (its shadow parameters follow the trainable order)."""
    weights = dict(state["trainable"])
    if "ema" in state:
        for key, shadow in zip(list(weights), state["ema"]["shadow_params"]):
            weights[key] = shadow
    return weights
