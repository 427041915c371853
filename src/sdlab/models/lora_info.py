"""What a LoRA file holds, without a model: layout, layers per component, how many are
convolutions (LoCon), ranks, alphas, the kinds of module it targets, its A1111 short hash."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .hashing import lora_short_hash
from .lora import _metadata_alphas, detect_format, read_file, split_key

# module-name endings, most specific first; kohya spells the dots as underscores
KINDS = ("ff.net.0.proj", "ff.net.2", "to_out.0", "conv_shortcut", "time_emb_proj", "proj_in", "proj_out",
         "out_proj", "to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj", "conv1", "conv2", "fc1", "fc2", "conv")


def module_kind(stem: str) -> str:
    return next((k for k in KINDS if stem.endswith((k, k.replace(".", "_")))), "other")


def _layers(tensors: dict, fmt: str) -> dict[tuple[str, str], dict]:
    """(component, module stem) -> {"down", "up", "alpha"?} for either layout."""
    out: dict[tuple[str, str], dict] = {}
    for key, value in tensors.items():
        comp, stem, part = split_key(key, fmt)
        out.setdefault((comp, stem), {})[part] = value
    return out


def describe_lora(path: str | Path) -> dict:
    tensors, metadata = read_file(path)
    fmt = detect_format(tensors)
    meta_alphas = _metadata_alphas(metadata)
    comps: dict[str, dict] = {}
    for (comp, stem), parts in _layers(tensors, fmt).items():
        d = comps.setdefault(comp, {"layers": 0, "conv": 0, "parameters": 0, "ranks": Counter(),
                                    "alphas": Counter(), "targets": Counter()})
        rank = parts["down"].shape[0] if "down" in parts else None
        alpha = float(parts["alpha"]) if "alpha" in parts else float(meta_alphas.get(comp) or rank or 0)
        d["layers"] += 1
        d["conv"] += int("down" in parts and parts["down"].dim() == 4)
        d["parameters"] += sum(t.numel() for k, t in parts.items() if k != "alpha")
        d["ranks"][rank] += 1
        d["alphas"][alpha] += 1
        d["targets"][module_kind(stem)] += 1
    for d in comps.values():
        for k in ("ranks", "alphas", "targets"):
            d[k] = dict(d[k].most_common())
    return {"file": str(path), "kind": "LoRA", "format": fmt, "hash": lora_short_hash(path), "components": comps}
