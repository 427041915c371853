"""Textual inversion's options, torch-free (what `sdlab train textual-inversion --help` shows);
the method is textual_inversion.py."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import check_settings, setting
from ...errors import ConfigError
from ...io.paths import safe_component
from .registry import Declaration

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


TEMPLATE_KINDS = ("object", "style", "none")        # none: the captions, with the placeholder in them


@dataclass(frozen=True)
class TIOptions:
    placeholder: str = setting("<my-shape>", "the new token")
    initializer: str = setting("shape", "word(s) whose embedding starts the new vectors")
    num_vectors: int = setting(1, "vectors per placeholder (N new tokens)", lo=1, hi=75)
    templates: str = setting("object", "prompt templates (none: use the captions, which must contain the placeholder)",
                             choices=lambda: TEMPLATE_KINDS)
    max_norm: float | None = setting(None, "clip each new vector's norm after every step (e.g. the vocabulary's "
                                     "typical norm)", lo=1e-6, hi=1e6, default_text="no clipping")

    def __post_init__(self):
        if not isinstance(self.placeholder, str) or not self.placeholder.strip() or " " in self.placeholder:
            raise ConfigError(f"placeholder must be one word without spaces, got {self.placeholder!r}")
        embedding_file_name(self.placeholder)
        if not isinstance(self.initializer, str) or not self.initializer.strip():
            raise ConfigError("initializer must be a non-empty word or phrase")
        check_settings(self)
        if self.templates not in TEMPLATE_KINDS:
            raise ConfigError(f"templates must be object, style or none; got {self.templates!r}")


DECLARATION = Declaration(
    name="textual-inversion", options=TIOptions,
    summary="learn new token embeddings for a concept (Gal et al. 2022)",
    recipe=dict(learning_rate=5e-3, adam_weight_decay=0.0, max_steps=500, caption_dropout=0.0))
