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
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import _check_float, _check_int
from ...errors import ConfigError
from ...io.paths import safe_component
from ...text import embeddings
from .base import DiffusionMethod

OBJECT_TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a picture of a {}", "an image of a {}",
                    "a {}", "the {}", "a drawing of a {}", "a clean {}", "a small {}", "a large {}")
STYLE_TEMPLATES = ("a painting in the style of {}", "a rendering in the style of {}", "an image in the style of {}",
                   "a picture in the style of {}", "a drawing in the style of {}", "{} style")

DIFFUSERS_FILE = "learned_embeds.safetensors"
OTHER_RESULTS = (DIFFUSERS_FILE, "lora_kohya.safetensors")     # what else a run writes beside NAME.safetensors


def embedding_file_name(placeholder: str, what: str = "placeholder") -> str:
    """`NAME.safetensors`, the A1111 file of placeholder `<NAME>`: NAME must be a single file
    name (a placeholder never names a path) and not the name of the run's other results."""
    name = safe_component(placeholder.strip("<>"), f"{what} {placeholder!r} names the embedding file "
                                                   "NAME.safetensors, so NAME")
    if f"{name}.safetensors" in OTHER_RESULTS:
        raise ConfigError(f"{what} {placeholder!r} would name its file {name}.safetensors, which the run writes "
                          "for another result; choose another placeholder")
    return f"{name}.safetensors"


@dataclass(frozen=True)
class TIOptions:
    placeholder: str = "<my-shape>"
    initializer: str = "shape"
    num_vectors: int = 1
    templates: str = "object"            # object, style, or none (use the captions)
    max_norm: float | None = None        # clip each new vector's norm after every step

    def __post_init__(self):
        if not isinstance(self.placeholder, str) or not self.placeholder.strip() or " " in self.placeholder:
            raise ConfigError(f"placeholder must be one word without spaces, got {self.placeholder!r}")
        embedding_file_name(self.placeholder)
        if not isinstance(self.initializer, str) or not self.initializer.strip():
            raise ConfigError("initializer must be a non-empty word or phrase")
        _check_int("num_vectors", self.num_vectors, 1, 75)
        if self.templates not in ("object", "style", "none"):
            raise ConfigError(f"templates must be object, style or none; got {self.templates!r}")
        if self.max_norm is not None:
            _check_float("max_norm", self.max_norm, 1e-6, 1e6)


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
        return self.new.save(output_dir, step=getattr(self, "step", 0))
