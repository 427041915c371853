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

from pathlib import Path

import torch

from ...errors import ConfigError
from ...models import lora as lora_files
from ..card import trained_prompt
from ..checkpoints import trained_weights
from .base import DiffusionMethod
from .lora_options import DECLARATION, TARGET_PRESETS, LoraOptions
from .prior import PriorPreservation
from .registry import MethodSpec
from .textual_inversion import DIFFUSERS_FILE, NewTokens

KOHYA_FILE = "lora_kohya.safetensors"
EMBEDDING_WEIGHT = "embeddings.token_embedding.weight"          # under text_model. in older transformers


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
        token = {id(self.new.rows)} if self.new is not None and o.new_token_lr is not None else set()
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
            self.new.sync()

    def save(self, output_dir: Path) -> list[Path]:
        layers = self.layers()
        out = Path(output_dir)
        saved = [lora_files.write(out / "lora" / "pytorch_lora_weights.safetensors", layers, "diffusers"),
                 lora_files.write(out / KOHYA_FILE, layers, "kohya")]
        return saved + (self.new.save(out, step=self.step) if self.new is not None else [])


def apply_checkpoint(pipe, state: dict, path) -> None:
    """A checkpoint's adapters (the EMA ones when kept) merged into `pipe` at scale 1; with a
    new token, its vectors as that token."""
    import json

    from ...text import embeddings

    weights, opts = trained_weights(state), state.get("options") or {}
    if opts.get("new_token"):
        n = opts.get("new_token_vectors") or 1
        rows = weights.pop(f"text_encoder.{NewTokens.PARAMETER}", None)
        if rows is None:                # checkpoints before the rows were their own parameter: the whole table
            rows = weights.pop(next(k for k in weights if k.startswith("text_encoder.")
                                    and k.endswith(EMBEDDING_WEIGHT)))[-n:]
        embeddings.add_tokens(pipe.c.tokenizer, pipe.c.text_encoder, embeddings.token_names(opts["new_token"], n),
                              rows)
    alpha = opts.get("alpha") or opts.get("rank")
    meta = {lora_files.METADATA_KEY: json.dumps({f"{c}.lora_alpha": alpha for c in lora_files.PREFIXES})}
    modules = lora_files.model_modules(pipe.c.unet, pipe.c.text_encoder)
    layers = lora_files.parse(weights, meta, lora_files.kohya_names(modules))
    lora_files.check_shapes(layers, modules)
    lora_files.AppliedLora(modules, layers, 1.0)


def usage(config, options: LoraOptions, saved: dict, out: Path) -> list[str]:
    extra = f" --embedding {saved[DIFFUSERS_FILE]}" if DIFFUSERS_FILE in saved else ""
    return [f'sdlab generate "{trained_prompt(config, options.new_token)}" --lora {saved[KOHYA_FILE]}:1.0{extra}']


def footprint(c, options: LoraOptions, low: bool):
    """The adapters train in fp32 over a base cast to the mixed precision; adapters on the resnet
    convolutions keep every conv's input, as training the whole UNet does."""
    from ..memory import Footprint, lora_numel, numel

    o = options
    unet_names, text_names = target_names(o.targets, c.unet, c.text_encoder if o.text_encoder else None)
    unet_layers = matching_modules(c.unet, unet_names)
    trainable = lora_numel(unet_layers, o.rank)
    if o.text_encoder:
        trainable += lora_numel(matching_modules(c.text_encoder, text_names), o.rank)
    weights = (numel(c.unet) + numel(c.vae) + numel(c.text_encoder)) * (2 if low else 4) + trainable * 4
    return Footprint(trainable=trainable, weights=weights, autocast_copies=trainable * 2 if low else 0,
                     text_trained=o.text_encoder, whole_unet=any(".resnets." in n for n in unet_layers),
                     samples=2 if o.prior_preservation else 1)


def prior_from_class_data(values: dict) -> dict:
    """The CLI's LoRA options: class prompts or a class image folder turn the prior on."""
    return {**values, "prior_preservation": bool(values.get("class_prompt") or values.get("class_data_dir"))}


SPEC = MethodSpec.declared(
    DECLARATION, method=LoRA,
    resume_keeps=("rank", "alpha", "targets", "text_encoder", "lr_ratio_b", "new_token", "new_token_vectors"),
    apply_checkpoint=apply_checkpoint, usage=usage, footprint=footprint, from_args=prior_from_class_data,
    studio={"rank": "rank", "lora_targets": "targets"})
