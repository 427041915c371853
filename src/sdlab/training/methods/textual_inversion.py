"""Textual inversion (Gal et al. 2022): learn new token embeddings for a concept, every
other weight frozen.

`<my-shape>` with N vectors becomes N new tokens `<my-shape> <my-shape>_1 ...` (the
diffusers convention), initialised from the initializer word(s). Only their rows of the
token-embedding matrix change: they train as their own parameter (NewTokens), every other
weight frozen.
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
    """New tokens whose vectors train, every other weight frozen. The vectors are their own small
    parameter (`rows`, registered on the text encoder so the loop and accelerate see it), put in
    place of the embedding table's output for the new ids by a forward hook, and copied into the
    table after each step (`sync`). So the optimizer and the gradient cover N x dim numbers, not
    the whole table: with SD's 49,408-token vocabulary that was most of a step's time (diffusers'
    script masks the whole table's gradient and restores its other rows instead). Used by
    textual inversion and by LoRA with a new token (pivotal tuning)."""

    PARAMETER = "new_token_rows"

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
        table = text.get_input_embeddings()
        self.rows = torch.nn.Parameter(table.weight[self.ids].detach().clone().float())
        text.register_parameter(self.PARAMETER, self.rows)
        slot = torch.full((table.weight.shape[0],), -1, dtype=torch.long, device=table.weight.device)
        slot[self.ids] = torch.arange(num_vectors, device=slot.device)
        rows = self.rows    # the hook holds these two tensors, not self (and through it the components)

        def put_rows(module, inputs, output):
            index = slot.to(inputs[0].device)[inputs[0]]
            new = rows.to(output.dtype)[index.clamp_min(0)]
            return torch.where((index >= 0)[..., None], new, output)

        table.register_forward_hook(put_rows)

    @property
    def phrase(self) -> str:
        return " ".join(self.tokens)

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.components.text_encoder.get_input_embeddings().weight

    def sync(self) -> None:
        """After a step: clip the new vectors (max_norm) and copy them into the embedding table."""
        with torch.no_grad():
            if self.max_norm is not None:
                scale = (self.max_norm / self.rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
                self.rows.mul_(scale)
            self.weight[self.ids] = self.rows.to(self.weight.dtype)

    def learned(self) -> torch.Tensor:
        return self.rows.detach().float().cpu().clone()

    def load(self, vectors: torch.Tensor) -> None:
        with torch.no_grad():
            self.rows.copy_(vectors.to(self.rows.device, self.rows.dtype))
        self.sync()

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
        self.new.sync()

    def learned(self) -> torch.Tensor:
        return self.new.learned()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"learned_embeds": self.learned()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.new.load(state["learned_embeds"])

    def save(self, output_dir: Path) -> list[Path]:
        return self.new.save(output_dir, step=self.step)


def apply_checkpoint(pipe, state: dict, path) -> None:
    """A checkpoint's vectors as the placeholder's new tokens."""
    vectors = state["trainable"]["learned_embeds"]
    placeholder = (state.get("options") or {})["placeholder"]
    embeddings.add_tokens(pipe.c.tokenizer, pipe.c.text_encoder, embeddings.token_names(placeholder, len(vectors)),
                          vectors)


def usage(config, options: TIOptions, saved: dict, out: Path) -> list[str]:
    return [f'sdlab generate "a {options.placeholder}" --embedding {saved[DIFFUSERS_FILE]}']


def footprint(c, options: TIOptions, low: bool):
    """Only the new vectors train; the text encoder stays fp32 and its activations are kept."""
    from ..memory import Footprint, numel

    emb = c.text_encoder.get_input_embeddings().weight
    new = options.num_vectors * emb.shape[1]
    weights = (numel(c.unet) + numel(c.vae)) * (2 if low else 4) + (numel(c.text_encoder) + new) * 4
    return Footprint(trainable=new, weights=weights, text_trained=True, whole_unet=False,
                     text_casts=True)


SPEC = MethodSpec.declared(
    DECLARATION, method=TextualInversion, resume_keeps=("placeholder", "num_vectors"),
    apply_checkpoint=apply_checkpoint, usage=usage, footprint=footprint,
    studio={"placeholder": "placeholder", "initializer": "initializer"})
