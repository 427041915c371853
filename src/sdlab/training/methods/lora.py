"""LoRA (Hu et al. 2021): low-rank adapters on the UNet's attention projections (and
optionally the text encoder's), trained with peft; the base weights stay frozen. `targets`
widens them to whole transformer blocks or to every resnet convolution too (what kohya's
LoCon / LyCORIS calls conv LoRA). Optionally with DreamBooth's prior preservation (`prior.py`),
and with a new token trained with the adapters (`new_token`: pivotal tuning, as cloneofsimo's
lora and diffusers' advanced DreamBooth-LoRA script do it).

Saves `lora/pytorch_lora_weights.safetensors` (diffusers/peft: what
`StableDiffusionPipeline.load_lora_weights` reads) and `lora_kohya.safetensors` (kohya /
AUTOMATIC1111 keys with `.alpha`); with a new token also its embedding, as textual inversion
saves it (`learned_embeds.safetensors`, `NAME.safetensors`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import _check_float, _check_int
from ...errors import ConfigError
from ...models import lora as lora_files
from .base import DiffusionMethod
from .prior import PriorOptions, PriorPreservation
from .textual_inversion import NewTokens, TIOptions, embedding_file_name

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
_BLOCKS = ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
_CONVS = ("conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv")   # "conv": the down/upsamplers
# preset -> (UNet module names, text-encoder module names), matched as peft does: by name suffix
TARGET_PRESETS = {
    "attention": (UNET_TARGETS, TEXT_TARGETS),
    "transformer": (UNET_TARGETS + _BLOCKS, TEXT_TARGETS + ("fc1", "fc2")),
    "all": (UNET_TARGETS + _BLOCKS + _CONVS, TEXT_TARGETS + ("fc1", "fc2")),
}
_NAME_LIST = re.compile(r"^[A-Za-z_][\w.]*(,[A-Za-z_][\w.]*)*$")


def matching_modules(module, names) -> dict[str, torch.nn.Module]:
    """Linear/Conv2d submodules whose name is one of `names` or ends with "." + one (peft's rule)."""
    return {n: m for n, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            and any(n == t or n.endswith("." + t) for t in names)}


def target_names(targets: str, unet, text_encoder=None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(UNet names, text-encoder names) for a preset or a comma-separated list of module
    names; a listed name that matches no Linear/Conv2d module of either is an error."""
    if targets in TARGET_PRESETS:
        return TARGET_PRESETS[targets]
    names = tuple(targets.split(","))
    comps = [("UNet", unet)] + ([("text encoder", text_encoder)] if text_encoder is not None else [])
    found = {label: tuple(t for t in names if matching_modules(m, (t,))) for label, m in comps}
    missing = [t for t in names if not any(t in f for f in found.values())]
    if missing:
        where = " or ".join(label for label, _ in comps)
        raise ConfigError(f"LoRA target {missing[0]!r} matches no Linear or Conv2d module of the {where}; use "
                          f"{', '.join(TARGET_PRESETS)} or module names such as to_q,to_v,ff.net.2,conv1")
    return found["UNet"], found.get("text encoder", ())


@dataclass(frozen=True)
class LoraOptions(PriorOptions):
    """Adapter shape, and (off by default) DreamBooth's prior preservation, as diffusers'
    DreamBooth-LoRA script offers it."""

    prior_preservation: bool = False
    rank: int = 4
    alpha: float | None = None          # None: alpha = rank (scale 1)
    text_encoder: bool = False
    targets: str = "attention"          # a TARGET_PRESETS key or module names "to_q,to_v,conv1"
    lr_ratio_b: float = 1.0             # LoRA+ (Hayou et al. 2024): the B matrices learn this much faster
    new_token: str | None = None        # a placeholder ("<sks>") whose embedding trains with the adapters
    new_token_init: str = "shape"       # ... initialised from this word
    new_token_vectors: int = 1
    new_token_lr: float | None = None   # the new token's own learning rate (None: the adapters')

    def __post_init__(self):
        super().__post_init__()
        _check_int("rank", self.rank, 1, 1024)
        if not isinstance(self.targets, str) or not (self.targets in TARGET_PRESETS or _NAME_LIST.match(self.targets)):
            raise ConfigError(f"LoRA targets must be one of {', '.join(TARGET_PRESETS)} or comma-separated "
                              f"module names (to_q,to_v,conv1), got {self.targets!r}")
        if self.alpha is not None:
            _check_float("alpha", self.alpha, 1e-6, 1e6)
        _check_float("lr_ratio_b", self.lr_ratio_b, 1e-3, 1e4)
        if self.new_token is not None:
            if isinstance(self.new_token, str):
                embedding_file_name(self.new_token, "new_token")                        # named as new_token
            TIOptions(self.new_token, self.new_token_init, self.new_token_vectors)       # the same checks
        if self.new_token_lr is not None:
            if self.new_token is None:
                raise ConfigError("new_token_lr is the new token's learning rate: give new_token (--new-token) too")
            _check_float("new_token_lr", self.new_token_lr, 0.0, 10.0)


class LoRA(PriorPreservation, DiffusionMethod):
    name = "lora"
    unet_adapters = True
    adapters_on_cast_base = True

    def __init__(self, options: LoraOptions | None = None):
        self.options = options or LoraOptions()
        self.text_adapters = self.options.text_encoder or self.options.new_token is not None   # trains there
        self.new = None

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups: the A (down) matrices at `lr`; the B (up) ones at `lr_ratio_b` x
        `lr` (LoRA+); a new token's embedding at `new_token_lr`. Without either, one group."""
        o, params = self.options, self.parameters()
        token = {id(self.new.weight)} if self.new is not None and o.new_token_lr is not None else set()
        up = {id(p) for n, p in self.named_trainable().items() if ".lora_B." in n} if o.lr_ratio_b != 1.0 else set()
        groups = [{"params": [p for p in params if id(p) not in up | token]}]
        if up:
            groups.append({"params": [p for p in params if id(p) in up], "lr": lr * o.lr_ratio_b})
        if token:
            groups.append({"params": [p for p in params if id(p) in token], "lr": o.new_token_lr})
        return groups

    def lora_config(self, targets):
        from peft import LoraConfig

        o = self.options
        return LoraConfig(r=o.rank, lora_alpha=o.alpha or o.rank, init_lora_weights="gaussian",
                          target_modules=list(targets))

    def prepare_modules(self) -> None:
        o = self.options
        unet_names, text_names = target_names(o.targets, self.c.unet, self.c.text_encoder if o.text_encoder else None)
        if not unet_names:
            raise ConfigError(f"LoRA targets {self.options.targets!r} name no UNet module; the UNet needs adapters")
        self.c.unet.add_adapter(self.lora_config(unet_names))
        if o.new_token is not None:
            self.new = NewTokens(self.c, o.new_token, o.new_token_init, o.new_token_vectors)
        if o.text_encoder:
            if not text_names:
                raise ConfigError(f"LoRA targets {self.options.targets!r} name no text-encoder module, "
                                  "but --train-text-encoder asks for adapters there")
            self.c.text_encoder.add_adapter(self.lora_config(text_names))
        self.prepare_prior()

    def layers(self) -> dict[str, lora_files.LoraLayer]:
        """The trained adapters as {"unet.<module>": LoraLayer}."""
        from peft.utils import get_peft_model_state_dict

        alpha = float(self.options.alpha or self.options.rank)
        layers = {}
        for comp in ("unet", "text_encoder"):
            module = getattr(self.c, comp)
            if module not in self.trainable_modules() or (comp == "text_encoder" and not self.options.text_encoder):
                continue
            sd = get_peft_model_state_dict(module)
            for key, down in sd.items():
                if key.endswith(".lora_A.weight"):
                    stem = key[: -len(".lora_A.weight")]
                    up = sd[stem + ".lora_B.weight"]
                    layers[f"{comp}.{stem}"] = lora_files.LoraLayer(down.detach().float().cpu(),
                                                                    up.detach().float().cpu(), alpha)
        return layers

    def transform_text(self, text: str, seed: int) -> str:
        """With a new token, its placeholder in a caption becomes the token's N vectors."""
        return text.replace(self.new.placeholder, self.new.phrase) if self.new is not None else text

    def after_step(self) -> None:
        if self.new is not None:
            self.new.restore_others()

    def save(self, output_dir: Path) -> list[Path]:
        layers = self.layers()
        out = Path(output_dir)
        saved = [lora_files.write(out / "lora" / "pytorch_lora_weights.safetensors", layers, "diffusers"),
                 lora_files.write(out / "lora_kohya.safetensors", layers, "kohya")]
        return saved + (self.new.save(out, step=getattr(self, "step", 0)) if self.new is not None else [])
