"""Textual inversion (Gal et al. 2022): learn new token embeddings for a concept, every
other weight frozen.

`<my-shape>` with N vectors becomes N new tokens `<my-shape> <my-shape>_1 ...` (the
diffusers convention), initialised from the initializer word(s). Only their rows of the
token-embedding matrix change: the gradient of every other row is masked and, since AdamW's
decoupled weight decay would still shrink them, the other rows are restored after each step.
Saves `learned_embeds.safetensors` ({token: (N, dim)}, diffusers) and `<name>.safetensors`
({"emb_params": (N, dim)}, the AUTOMATIC1111 / kohya layout).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ...errors import ConfigError
from ...text import embeddings
from .base import DiffusionMethod
from .registry import MethodSpec
from .textual_inversion_options import DECLARATION, DIFFUSERS_FILE, TIOptions, embedding_file_name

OBJECT_TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a picture of a {}", "an image of a {}",
                    "a {}", "the {}", "a drawing of a {}", "a clean {}", "a small {}", "a large {}")
STYLE_TEMPLATES = ("a painting in the style of {}", "a rendering in the style of {}", "an image in the style of {}",
                   "a picture in the style of {}", "a drawing in the style of {}", "{} style")

class NewTokens:
    """New tokens whose rows of the text encoder's embedding matrix train, every other row
    frozen: the gradient of every other row is masked and, since AdamW's decoupled weight decay
    would still shrink them, they are restored after each step (`restore_others`). Used by
    textual inversion and by LoRA with a new token (pivotal tuning)."""

    def __init__(self, components, placeholder: str, initializer: str, num_vectors: int,
                 max_norm: float | None = None):
        tok, text = components.tokenizer, components.text_encoder
        self.components, self.placeholder, self.max_norm = components, placeholder, max_norm
        self.tokens = embeddings.token_names(placeholder, num_vectors)
        init_ids = tok(initializer, add_special_tokens=False).input_ids
        if not init_ids:
            raise ConfigError(f"initializer {initializer!r} gives no tokens")
        init = text.get_input_embeddings().weight[init_ids].detach().clone()
        vectors = init[torch.arange(num_vectors) % len(init_ids)]
        self.ids = embeddings.add_tokens(tok, text, self.tokens, vectors)
        weight = text.get_input_embeddings().weight
        weight.requires_grad_(True)
        self.original = weight.detach().clone()
        self.keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        self.keep[self.ids] = False
        keep = self.keep    # the hook must not close over self: autograd holds hooks from C++, out of
        weight.register_hook(lambda g: g.masked_fill(keep[:, None], 0.0))  # gc's reach: the model would leak

    @property
    def phrase(self) -> str:
        return " ".join(self.tokens)

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.components.text_encoder.get_input_embeddings().weight

    def restore_others(self) -> None:
        with torch.no_grad():
            self.weight[self.keep] = self.original[self.keep]
            if self.max_norm is not None:
                new = self.weight[self.ids]
                scale = (self.max_norm / new.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
                self.weight[self.ids] = new * scale

    def learned(self) -> torch.Tensor:
        return self.weight[self.ids].detach().float().cpu().clone()

    def load(self, vectors: torch.Tensor) -> None:
        with torch.no_grad():
            self.weight[self.ids] = vectors.to(self.weight.device, self.weight.dtype)

    def save(self, output_dir: Path, step: int = 0) -> list[Path]:
        """learned_embeds.safetensors (diffusers) and NAME.safetensors (A1111 / kohya)."""
        out, file, vec = Path(output_dir), embedding_file_name(self.placeholder), self.learned()
        return [embeddings.save_diffusers(out / DIFFUSERS_FILE, {self.placeholder: vec}),
                embeddings.save_a1111(out / file, file.removesuffix(".safetensors"), vec, step=step)]


class TextualInversion(DiffusionMethod):
    name = "textual-inversion"
    text_adapters = True        # the text encoder is prepared; only its new rows train

    def __init__(self, options: TIOptions | None = None):
        self.options = options or TIOptions()

    def prepare_modules(self) -> None:
        o = self.options
        self.new = NewTokens(self.c, o.placeholder, o.initializer, o.num_vectors, o.max_norm)
        self.tokens, self.ids = self.new.tokens, self.new.ids

    def transform_text(self, text: str, seed: int) -> str:
        o = self.options
        phrase = self.new.phrase
        if o.templates == "none":
            if o.placeholder not in text:
                raise ConfigError(f"caption {text!r} lacks the placeholder {o.placeholder}; use --templates object")
            return text.replace(o.placeholder, phrase)
        templates = OBJECT_TEMPLATES if o.templates == "object" else STYLE_TEMPLATES
        return random.Random(seed).choice(templates).format(phrase)

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.new.weight

    def after_step(self) -> None:
        self.new.restore_others()

    def learned(self) -> torch.Tensor:
        return self.new.learned()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"learned_embeds": self.learned()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.new.load(state["learned_embeds"])

    def save(self, output_dir: Path) -> list[Path]:
        return self.new.save(output_dir, step=self.step)


def apply_checkpoint(pipe, state: dict, path) -> None:
    """A checkpoint's vectors as the placeholder's new tokens (as trained: an EMA would be of
    the whole embedding table)."""
    vectors = state["trainable"]["learned_embeds"]
    placeholder = (state.get("options") or {})["placeholder"]
    embeddings.add_tokens(pipe.c.tokenizer, pipe.c.text_encoder, embeddings.token_names(placeholder, len(vectors)),
                          vectors)


def usage(config, options: TIOptions, saved: dict, out: Path) -> list[str]:
    return [f'sdlab generate "a {options.placeholder}" --embedding {saved[DIFFUSERS_FILE]}']


def footprint(c, options: TIOptions, low: bool):
    """The whole embedding table trains (other rows are restored after each step); the text
    encoder stays fp32 and its activations are kept."""
    from ..memory import Footprint, numel

    emb = c.text_encoder.get_input_embeddings().weight
    new = options.num_vectors * emb.shape[1]
    weights = (numel(c.unet) + numel(c.vae)) * (2 if low else 4) + (numel(c.text_encoder) + new) * 4
    return Footprint(trainable=emb.numel() + new, weights=weights, text_trained=True, whole_unet=False,
                     text_casts=True)


SPEC = MethodSpec.declared(
    DECLARATION, method=TextualInversion, resume_keeps=("placeholder", "num_vectors"),
    apply_checkpoint=apply_checkpoint, usage=usage, footprint=footprint,
    studio={"placeholder": "placeholder", "initializer": "initializer"})
