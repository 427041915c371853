"""LoRA files (Hu et al. 2021) in the two layouts people share, checked key by key.

- diffusers/peft: `unet.<module>.lora_A.weight` (down) / `.lora_B.weight` (up), the same
  for `text_encoder.`; rank and alpha in the safetensors metadata `lora_adapter_metadata`
  (what `StableDiffusionPipeline.load_lora_weights` reads).
- kohya-ss / AUTOMATIC1111: `lora_unet_<module_with_underscores>.lora_down.weight`,
  `.lora_up.weight`, `.alpha`; `lora_te_` for the text encoder.

Text-encoder modules are written as transformers 4.x names them, under `text_model.`
(`lora_te_text_model_encoder_layers_0_self_attn_q_proj`, `text_encoder.text_model.encoder...`),
the names A1111, ComfyUI, kohya and diffusers map, whichever transformers runs here; files
without `text_model.` (sdlab before 0.2) are still read.

Both read into one form: {"unet.<module>": LoraLayer(down, up, alpha)}, matched against a
model's modules; an unknown key, a half pair or a wrong shape is an error, never dropped.
A layer adds `scale * alpha / rank * up @ down` to the module's weight.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ConfigError, ModelLoadError
from ..io.atomic import atomic_save
from ..io.tensor_files import read_safetensors, safetensors_keys

PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
METADATA_KEY = "lora_adapter_metadata"
PEFT_KEY = re.compile(r"^(unet|text_encoder)\.(.+)\.lora_(A|B)(?:\.default)?\.weight$")
KOHYA_KEY = re.compile(r"^(lora_unet_|lora_te_)(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")


@dataclass
class LoraLayer:
    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def delta(self, weight_shape) -> torch.Tensor:
        """alpha / rank * up @ down, shaped like the module weight (Linear or Conv2d)."""
        up, down = self.up.float().flatten(1), self.down.float().flatten(1)
        return (up @ down).reshape(weight_shape) * (self.alpha / self.rank)


def lora_modules(model, component: str) -> dict[str, torch.nn.Module]:
    """"component.<name>" -> Linear/Conv2d module, for every module a LoRA may target."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and "lora_" not in name:
            out[f"{component}.{name}"] = module
    return out


def looks_like_lora(keys) -> bool:
    """Whether tensor names are a LoRA's (either layout) rather than an embedding's or a model's."""
    return any(k.startswith(("unet.", "text_encoder.", "lora_unet_", "lora_te_")) for k in keys)


def is_lora_file(path: str | Path, what: str = "file") -> bool:
    """A .safetensors file whose tensor names are a LoRA's (read from the header, not the tensors);
    `what` names it in the error for a missing or unreadable file."""
    return Path(path).suffix == ".safetensors" and looks_like_lora(safetensors_keys(path, what))


def read_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if path.is_file() and path.suffix != ".safetensors":
        raise ModelLoadError(f"LoRA file '{path}': only .safetensors is read")
    return read_safetensors(path, "LoRA file")


def detect_format(tensors: dict) -> str:
    if tensors and all(KOHYA_KEY.match(k) for k in tensors):
        return "kohya"
    if tensors and all(PEFT_KEY.match(k) for k in tensors):
        return "diffusers"
    bad = [k for k in tensors if not (KOHYA_KEY.match(k) or PEFT_KEY.match(k))][:3]
    if not tensors:
        raise ConfigError("the LoRA file holds no tensors")
    if bad:
        raise ConfigError(f"unknown LoRA keys (neither diffusers 'unet.<module>.lora_A.weight' nor kohya "
                          f"'lora_unet_<module>.lora_down.weight'): {', '.join(bad)}")
    raise ConfigError("the LoRA file mixes diffusers and kohya keys")


KOHYA_PARTS = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}


def split_key(key: str, fmt: str) -> tuple[str, str, str]:
    """(component, stem, part) of a LoRA key; part is down, up or alpha, the stem is the module
    path (diffusers) or its kohya spelling with underscores (`down_blocks_0_...`)."""
    if fmt == "kohya":
        prefix, stem, part = KOHYA_KEY.match(key).groups()
        return ("unet" if prefix == PREFIXES["unet"] else "text_encoder"), stem, KOHYA_PARTS[part]
    comp, stem, ab = PEFT_KEY.match(key).groups()
    return comp, stem, "down" if ab == "A" else "up"


def parse(tensors: dict, metadata: dict, names: dict[str, str]) -> dict[str, LoraLayer]:
    """Tensors of either layout -> {"unet.<module>": LoraLayer}. `names` (kohya_names) maps
    kohya stems (`lora_unet_down_blocks_0_...`) and file paths to module paths (`unet.down_blocks.0...`)."""
    fmt = detect_format(tensors)
    parts: dict[str, dict] = {}
    for key, value in tensors.items():
        comp, stem, kind = split_key(key, fmt)
        spelled = PREFIXES[comp] + stem if fmt == "kohya" else f"{comp}.{stem}"
        module = names.get(spelled) if fmt == "kohya" else names.get(spelled, spelled)
        if module is None:
            raise ConfigError(f"LoRA key '{key}' names no module of this model")
        parts.setdefault(module, {})[kind] = value
    alphas = _metadata_alphas(metadata)
    layers = {}
    for module, p in parts.items():
        if "down" not in p or "up" not in p:
            missing = "up" if "down" in p else "down"
            raise ConfigError(f"LoRA layer '{module}' has no {missing} weight (unmatched key)")
        alpha = p.get("alpha")
        alpha = float(alpha) if alpha is not None else alphas.get(module.split(".")[0], float(p["down"].shape[0]))
        layers[module] = LoraLayer(p["down"], p["up"], alpha)
    return layers


def _metadata_alphas(metadata: dict) -> dict[str, float]:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    meta = json.loads(raw)
    return {comp: float(meta[f"{comp}.lora_alpha"]) for comp in PREFIXES if f"{comp}.lora_alpha" in meta}


TEXT_MODEL = "text_model."


def file_name(path: str) -> str:
    """How a file names the module `path` ("component.<module>"): text-encoder modules under
    `text_model.`, as transformers 4.x (and so every peer tool) names CLIPTextModel's modules."""
    comp, name = path.split(".", 1)
    return f"{comp}.{TEXT_MODEL}{name.removeprefix(TEXT_MODEL)}" if comp == "text_encoder" else path


def kohya_stem(path: str) -> str:
    """kohya's name of the module `path`: `lora_te_text_model_encoder_layers_0_self_attn_q_proj`."""
    comp, name = file_name(path).split(".", 1)
    return PREFIXES[comp] + name.replace(".", "_")


def kohya_names(modules: dict[str, torch.nn.Module]) -> dict[str, str]:
    """File spelling -> module path, for every module in `modules` (see lora_modules): kohya
    stems and diffusers paths, with and without the text encoder's `text_model.`."""
    out = {}
    for path in modules:
        comp, name = path.split(".", 1)
        bare = f"{comp}.{name.removeprefix(TEXT_MODEL)}"
        for spelling in {path, bare, file_name(path)}:
            out[spelling] = path
            out[PREFIXES[comp] + spelling.split(".", 1)[1].replace(".", "_")] = path
    return out


def check_shapes(layers: dict[str, LoraLayer], modules: dict[str, torch.nn.Module]) -> None:
    for path, layer in layers.items():
        module = modules.get(path)
        if module is None:
            raise ConfigError(f"LoRA layer '{path}' names no module of this model")
        w = module.weight
        if layer.up.shape[0] != w.shape[0] or layer.down.flatten(1).shape[1] != w[0].numel() \
                or layer.up.flatten(1).shape[1] != layer.rank:
            raise ConfigError(f"LoRA layer '{path}': up {tuple(layer.up.shape)} / down {tuple(layer.down.shape)} "
                              f"do not fit the module weight {tuple(w.shape)}")


def model_modules(unet, text_encoder) -> dict[str, torch.nn.Module]:
    return {**lora_modules(unet, "unet"), **lora_modules(text_encoder, "text_encoder")}


def load_layers(path, unet, text_encoder) -> dict[str, LoraLayer]:
    """Read a LoRA file of either layout, matched and shape-checked against the model."""
    modules = model_modules(unet, text_encoder)
    tensors, metadata = read_file(path)
    layers = parse(tensors, metadata, kohya_names(modules))
    check_shapes(layers, modules)
    return layers


def write(path: str | Path, layers: dict[str, LoraLayer], fmt: str, *, replace: bool = True,
          metadata: dict | None = None) -> Path:
    """Write `layers` as a diffusers/peft or kohya safetensors file (atomically; an existing
    file is kept, OutputExists, unless `replace`); `metadata`: more header entries (strings)."""
    tensors: dict[str, torch.Tensor] = {}
    metadata = {**(metadata or {}), "format": "pt"}
    if fmt == "kohya":
        for module, layer in layers.items():
            stem = kohya_stem(module)
            tensors[f"{stem}.lora_down.weight"] = layer.down.contiguous()
            tensors[f"{stem}.lora_up.weight"] = layer.up.contiguous()
            tensors[f"{stem}.alpha"] = torch.tensor(float(layer.alpha))
    elif fmt == "diffusers":
        for module, layer in layers.items():
            tensors[f"{file_name(module)}.lora_A.weight"] = layer.down.contiguous()
            tensors[f"{file_name(module)}.lora_B.weight"] = layer.up.contiguous()
        metadata[METADATA_KEY] = json.dumps(_peft_metadata(layers), indent=2, sort_keys=True)
    else:
        raise ConfigError(f"LoRA format must be 'diffusers' or 'kohya', got {fmt!r}")
    return atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), replace=replace)


def _peft_metadata(layers: dict[str, LoraLayer]) -> dict:
    """Per component: rank, alpha and target modules as peft's LoraConfig names them;
    layers that differ from the most common rank/alpha go into rank_/alpha_pattern."""
    meta = {}
    for comp in PREFIXES:
        mine = {m.split(".", 1)[1]: l for m, l in layers.items() if m.startswith(comp + ".")}
        if not mine:
            continue
        ranks = [l.rank for l in mine.values()]
        alphas = [l.alpha for l in mine.values()]
        r, a = max(set(ranks), key=ranks.count), max(set(alphas), key=alphas.count)
        meta.update({f"{comp}.r": r, f"{comp}.lora_alpha": a, f"{comp}.target_modules": sorted(mine),
                     f"{comp}.rank_pattern": {n: l.rank for n, l in mine.items() if l.rank != r},
                     f"{comp}.alpha_pattern": {n: l.alpha for n, l in mine.items() if l.alpha != a}})
    return meta


def convert(src: str | Path, dst: str | Path, fmt: str, unet, text_encoder) -> tuple[Path, int]:
    """Rewrite a LoRA file in format `fmt`, every key matched against the model; returns
    (path, number of layers)."""
    layers = load_layers(src, unet, text_encoder)
    return write(dst, layers, fmt), len(layers)


@torch.no_grad()
def refresh_fused_projections(attentions) -> None:
    """Copy merged to_q/to_k/to_v weights into diffusers' fused `to_qkv` (self-attention) or
    `to_kv` (cross-attention) of attention modules fused by `fuse_qkv_projections` (--fast)."""
    for attn in attentions:
        parts = [attn.to_k, attn.to_v] if attn.is_cross_attention else [attn.to_q, attn.to_k, attn.to_v]
        fused = attn.to_kv if attn.is_cross_attention else attn.to_qkv
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))


class AppliedLora:
    """LoRA deltas merged into a model's weights; `remove()` takes them out again (and its
    record out of `registry`, the pipeline's list of applied files). `fused` attention modules
    (--fast) get their fused projections rebuilt after each change."""

    def __init__(self, modules: dict[str, torch.nn.Module], layers: dict[str, LoraLayer], scale: float,
                 registry: list | None = None, record: dict | None = None, fused=()):
        self.registry, self.record = registry, record
        if registry is not None:
            registry.append(record)
        self.applied, self.fused = [], list(fused)
        with torch.no_grad():
            for path, layer in layers.items():
                w = modules[path].weight
                delta = (layer.delta(w.shape) * scale).to(w.device, w.dtype)
                merged = w + delta
                if not torch.isfinite(merged).all():    # NaN/inf merged in could never be taken out again
                    self.remove()
                    raise ConfigError(f"LoRA layer '{path}' at scale {scale:g} makes the weights non-finite "
                                      f"(NaN/inf in the file, or an overflow in {str(w.dtype).replace('torch.', '')}); "
                                      "the LoRA was not applied")
                w.copy_(merged)
                self.applied.append((w, delta))
        refresh_fused_projections(self.fused)

    def remove(self) -> None:
        with torch.no_grad():
            for w, delta in self.applied:
                w.sub_(delta)
        refresh_fused_projections(self.fused)
        self.applied = []
        if self.registry is not None and self.record in self.registry:
            self.registry.remove(self.record)


def apply_lora(pipe, path: str | Path, scale: float = 1.0) -> AppliedLora:
    """Merge a LoRA file (either layout) into an sdlab Pipeline at `scale`."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not -10 <= scale <= 10:
        raise ConfigError(f"LoRA scale must be a number in [-10, 10], got {scale!r}")
    from .hashing import lora_short_hash

    layers = load_layers(path, pipe.c.unet, pipe.c.text_encoder)
    record = {"name": Path(path).stem, "hash": lora_short_hash(path), "scale": float(scale)}
    fused = [m for m in pipe.c.unet.modules() if getattr(m, "fused_projections", False)]
    return AppliedLora(model_modules(pipe.c.unet, pipe.c.text_encoder), layers, float(scale),
                       getattr(pipe, "loras", None), record, fused)
