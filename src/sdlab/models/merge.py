"""Merging checkpoints as AUTOMATIC1111's Checkpoint Merger does: weighted sum (1 - alpha) A + alpha B,
add difference A + alpha (B - C), tensor by tensor.

Models are diffusers folders (every .safetensors weight file merged with the file at the same place in B
and C, the other files copied from A) or single .safetensors checkpoints; LoRA files merge the same way on
their tensors (down, up and alpha alike, so ranks must agree). A model merges with models of its layout
only, a LoRA with LoRAs, and every key and shape must match: the first mismatch is named in one line.
Weights are read one tensor at a time (safetensors' safe_open), computed in float32 (float64 stays) and
stored in A's dtype, so alpha 0 gives A and alpha 1 gives B bit for bit (B's dtype being A's), and a
tensor A and B share (a LoRA's alphas, a VAE both models kept) stays as it is.

The output never replaces anything (a folder is filled beside it and renamed, a file likewise) and records
its recipe as A1111 does: `sd_merge_recipe` in each weight file's metadata, and for a folder also the file
sd_merge_recipe.json in it; a single file's A.yaml config beside it is copied beside the output. Pickled weights (.ckpt, .bin, .pt) are refused: sdlab reads no pickles here.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from safetensors import safe_open

from ..errors import ConfigError
from ..io.atomic import OutputExists, atomic_dir, atomic_save
from ..io.paths import exists_message
from .hashing import lora_short_hash, model_hash

if TYPE_CHECKING:       # torch loads in the functions that merge: `sdlab merge --help` stays torch-free
    import torch

MODES = {"weighted": "Weighted sum", "add-difference": "Add difference"}   # sdlab's name: A1111's label
RECIPE_KEY = "sd_merge_recipe"
RECIPE_FILE = "sd_merge_recipe.json"
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
ROLES = ("primary", "secondary", "tertiary")     # A, B, C as A1111's recipe names them


class Progress:
    """Counts merged tensors for a StepCallback (sdlab.callbacks: step, total) and stops at a cancel."""

    def __init__(self, callback=None, cancel=None):
        self.done, self.total, self.callback, self.cancel = 0, 0, callback, cancel      # total: set once counted

    def tick(self) -> None:
        from ..callbacks import StepEvent

        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        if self.callback is not None:
            self.callback(StepEvent(self.done, self.total))
        self.done += 1


def count_tensors(paths: list[Path]) -> int:
    """Tensors in these .safetensors files (the keys only are read)."""
    total = 0
    for path in paths:
        with _open(path, str(path.name)) as f:
            total += len(f.keys())
    return total


@dataclass(frozen=True)
class MergeResult:
    path: Path
    kind: str           # "model folder", "model file" or "LoRA file"
    tensors: int        # tensors merged


def check_options(alpha: float, mode: str, c) -> None:
    """alpha a number in [0, 1] (A1111's multiplier), mode one of MODES; C given for add-difference only."""
    if mode not in MODES:
        raise ConfigError(f"merge mode must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be a number from 0 to 1; got {alpha!r}")
    if mode == "add-difference" and c is None:
        raise ConfigError("add-difference needs a third model C (--c): the result is A + alpha (B - C)")
    if mode == "weighted" and c is not None:
        raise ConfigError("a third model C is only used with --mode add-difference")


def merge_tensor(a: torch.Tensor, b: torch.Tensor, c: Optional[torch.Tensor], alpha: float, mode: str) -> torch.Tensor:
    """One tensor of the merge, in A's dtype; a tensor that is not floating point (an index buffer) is A's,
    and so is one that B holds too (weighted: (1 - alpha) x + alpha x may round an ulp away from x)."""
    import torch

    if not a.is_floating_point() or (mode == "weighted" and a.dtype == b.dtype and torch.equal(a, b)):
        return a
    work = torch.promote_types(a.dtype, torch.float32)
    a32, b32 = a.to(work), b.to(work)
    out = (1 - alpha) * a32 + alpha * b32 if mode == "weighted" else a32 + alpha * (b32 - c.to(work))
    return out.to(a.dtype)


def kind_of(path: Path, what: str) -> str:
    """"model folder", "model file" or "LoRA file" (`what`: "A", "B" or "C", for the error)."""
    if path.is_dir():
        return "model folder"
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ConfigError(f"{what} '{path}' is a pickle; sdlab merges .safetensors files only")
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"{what} '{path}' is not a model folder or a .safetensors file")
    from .lora import looks_like_lora

    with _open(path, what) as f:
        return "LoRA file" if looks_like_lora(f.keys()) else "model file"


def _open(path: Path, what: str):
    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:   # safetensors raises its own error types
        raise ConfigError(f"cannot read {what} '{path}': {exc}") from exc


def _shapes(f) -> dict[str, tuple]:
    return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def check_same_keys(shapes: dict[str, dict], where: str) -> None:
    """Every model ("A", "B", "C" -> {key: shape}) has A's keys with A's shapes; else one line naming the
    first key (in sorted order) that differs."""
    a = shapes["A"]
    for key in sorted(set().union(*shapes.values())):
        for other, theirs in shapes.items():
            if key not in a:
                raise ConfigError(f"{where}: key '{key}' is in {other} but not in A: the models do not match")
            if key not in theirs:
                raise ConfigError(f"{where}: key '{key}' is in A but not in {other}: the models do not match")
            if theirs[key] != a[key]:
                raise ConfigError(f"{where}: key '{key}' has shape {list(a[key])} in A but {list(theirs[key])} "
                                  f"in {other}: the models do not match")


def merge_file(paths: dict[str, Path], out: Path, alpha: float, mode: str, recipe: dict,
               progress: Optional[Progress] = None) -> int:
    """Merge the .safetensors files paths["A"], ["B"] (and ["C"]) into `out` (a path to write now, not
    published), A's metadata plus the recipe; returns the number of tensors. `progress` ticks per tensor."""
    from safetensors.torch import save_file

    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(_open(p, name)) for name, p in paths.items()}
        check_same_keys({name: _shapes(f) for name, f in files.items()}, str(paths["A"].name))
        tensors = {}
        for key in files["A"].keys():
            if progress is not None:
                progress.tick()
            tensors[key] = merge_tensor(files["A"].get_tensor(key), files["B"].get_tensor(key),
                                        files["C"].get_tensor(key) if "C" in files else None, alpha, mode).contiguous()
        metadata = {**(files["A"].metadata() or {}), RECIPE_KEY: json.dumps(recipe, sort_keys=True)}
    save_file(tensors, str(out), metadata=metadata)
    return len(tensors)


def _files(folder: Path) -> list[Path]:
    """The files of a model folder, relative, sorted; hidden ones (a download cache) left out."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _weights(folder: Path, what: str) -> set[Path]:
    files = _files(folder)
    pickled = [f for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
    if pickled:
        raise ConfigError(f"{what} '{folder}' holds pickled weights ('{pickled[0]}'); sdlab merges .safetensors "
                          f"weights only (save the model with safe_serialization=True)")
    weights = {f for f in files if f.suffix == ".safetensors"}
    if not weights:
        raise ConfigError(f"{what} '{folder}' holds no .safetensors weights")
    return weights


def merge_folders(folders: dict[str, Path], out: Path, alpha: float, mode: str, recipe: dict,
                  progress: Optional[Progress] = None) -> int:
    """Diffusers folders: each weight file merged with its namesakes, A's other files copied.
    `progress` ticks per tensor of A's weight files."""
    weights = {name: _weights(p, name) for name, p in folders.items()}
    for name, mine in weights.items():
        if mine != weights["A"]:
            odd = sorted(mine ^ weights["A"])[0]
            side = name if odd in mine else "A"
            raise ConfigError(f"weight file '{odd}' is in {side}'s folder but not in "
                              f"{'A' if side != 'A' else name}'s: the models do not match")
    count = 0
    if progress is not None:
        progress.total = count_tensors([folders["A"] / w for w in sorted(weights["A"])])
    with atomic_dir(out, replace=False) as tmp:
        for rel in _files(folders["A"]):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel in weights["A"]:
                count += merge_file({name: p / rel for name, p in folders.items()}, tmp / rel, alpha, mode, recipe,
                                    progress)
            else:
                shutil.copyfile(folders["A"] / rel, tmp / rel)
        (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return count


def make_recipe(paths: dict[str, Path], kind: str, alpha: float, mode: str) -> dict:
    """A1111's sd_merge_recipe fields that apply: the method, the multiplier, each model's name and hash."""
    hash_of = lora_short_hash if kind == "LoRA file" else model_hash
    recipe = {"type": "sdlab", "interp_method": MODES[mode], "multiplier": alpha, "kind": kind}
    for role, (name, path) in zip(ROLES, paths.items()):
        recipe[f"{role}_model"] = path.name
        recipe[f"{role}_model_hash"] = hash_of(path)
    return recipe


def merge(a, b, out, *, alpha: float, mode: str = "weighted", c=None, callback=None, cancel=None) -> MergeResult:
    """Merge models or LoRA files A and B (and C for add-difference) into `out`, which must not exist:
    a folder for model folders, a .safetensors file otherwise. `callback` (a StepCallback) sees one
    step per tensor; `cancel` (a CancelToken) stops it with nothing published."""
    check_options(alpha, mode, c)
    paths = {name: Path(p) for name, p in (("A", a), ("B", b), ("C", c)) if p is not None}
    kinds = {name: kind_of(p, name) for name, p in paths.items()}
    for name, kind in kinds.items():
        if kind != kinds["A"]:
            raise ConfigError(f"A is a {kinds['A']} and {name} a {kind}: merge models with models of the same "
                              f"layout and LoRAs with LoRAs (sdlab convert makes a single file of a folder)")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise OutputExists(exists_message(out, "--out"))
    recipe = make_recipe(paths, kinds["A"], alpha, mode)
    progress = None if callback is None and cancel is None else Progress(callback, cancel)
    if kinds["A"] == "model folder":
        return MergeResult(out, kinds["A"], merge_folders(paths, out, alpha, mode, recipe, progress))
    if out.suffix != ".safetensors":
        raise ConfigError(f"the output '{out}' of a {kinds['A']} merge must be a .safetensors file")
    sidecar = paths["A"].with_suffix(".yaml")     # a single file's config (A1111's, sdlab convert's)
    if kinds["A"] == "model file" and sidecar.is_file() and out.with_suffix(".yaml").exists():
        raise OutputExists(exists_message(out.with_suffix(".yaml"), "--out"))
    count = []
    if progress is not None:
        progress.total = count_tensors([paths["A"]])
    atomic_save(out, lambda tmp: count.append(merge_file(paths, Path(tmp), alpha, mode, recipe, progress)),
                replace=False)
    if kinds["A"] == "model file" and sidecar.is_file():
        atomic_save(out.with_suffix(".yaml"), lambda tmp: shutil.copyfile(sidecar, tmp), replace=False)
    return MergeResult(out, kinds["A"], count[0])


def merge_models(a, b, out, *, alpha: float, mode: str = "weighted", c=None) -> MergeResult:
    """`merge` for models (diffusers folders, or single .safetensors checkpoints); refuses LoRA files."""
    return _only(("model folder", "model file"), "a model", a, b, out, alpha, mode, c)


def merge_loras(a, b, out, *, alpha: float, mode: str = "weighted", c=None) -> MergeResult:
    """`merge` for LoRA files (either layout, both the same); refuses models."""
    return _only(("LoRA file",), "a LoRA file", a, b, out, alpha, mode, c)


def _only(kinds: tuple, label: str, a, b, out, alpha, mode, c) -> MergeResult:
    kind = kind_of(Path(a), "A")
    if kind not in kinds:
        raise ConfigError(f"A '{a}' is a {kind}, not {label}")
    return merge(a, b, out, alpha=alpha, mode=mode, c=c)
