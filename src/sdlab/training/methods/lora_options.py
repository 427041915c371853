"""LoRA's options, torch-free (what `sdlab train lora --help` shows); the method is lora.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...config import _check_float, setting
from ...errors import ConfigError
from .prior_options import PriorOptions
from .registry import Declaration
from .textual_inversion_options import TIOptions, embedding_file_name

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


@dataclass(frozen=True)
class LoraOptions(PriorOptions):
    """Adapter shape, and (off by default) DreamBooth's prior preservation, as diffusers'
    DreamBooth-LoRA script offers it."""

    prior_preservation: bool = False    # the CLI turns it on with class prompts or class images (from_args)
    rank: int = setting(4, "LoRA rank: the adapters' inner width", lo=1, hi=1024)
    alpha: float | None = setting(None, "LoRA alpha (the adapters' scale is alpha / rank)", lo=1e-6, hi=1e6,
                                  default_text="rank")
    text_encoder: bool = setting(False, "adapters on the text encoder too", flag="--train-text-encoder")
    targets: str = setting("all", "layers that get adapters: attention (q, k, v, out), transformer (+ proj_in/out "
                           "and feed-forward), all (+ every resnet conv and the samplers: LoCon, which a new shape "
                           "needs), or module names, e.g. to_q,to_v,conv1")
    lr_ratio_b: float = setting(1.0, "LoRA+ (Hayou et al. 2024): the B (up) matrices learn this many times faster than "
                                "the A (down) ones; 16 is the paper's choice (kohya's loraplus_lr_ratio; 1: off)",
                                lo=1e-3, hi=1e4)
    new_token: str | None = setting(None, "also learn an embedding for this new token, used in the captions (e.g. "
                                    "'<sks>'): pivotal tuning; saved as textual inversion saves it")
    new_token_init: str = setting("shape", "the word the new token starts from")
    new_token_vectors: int = setting(1, "vectors of the new token")
    new_token_lr: float | None = setting(None, "the new token's own learning rate (textual inversion's is 5e-3)",
                                         default_text="the adapters'")

    def __post_init__(self):
        super().__post_init__()         # with the declared ranges
        if not isinstance(self.targets, str) or not (self.targets in TARGET_PRESETS or _NAME_LIST.match(self.targets)):
            raise ConfigError(f"LoRA targets must be one of {', '.join(TARGET_PRESETS)} or comma-separated "
                              f"module names (to_q,to_v,conv1), got {self.targets!r}")
        if self.new_token is not None:
            if isinstance(self.new_token, str):
                embedding_file_name(self.new_token, "new_token")                        # named as new_token
            TIOptions(self.new_token, self.new_token_init, self.new_token_vectors)       # the same checks
        if self.new_token_lr is not None:
            if self.new_token is None:
                raise ConfigError("new_token_lr is the new token's learning rate: give new_token (--new-token) too")
            _check_float("new_token_lr", self.new_token_lr, 0.0, 10.0)


DECLARATION = Declaration(
    name="lora", options=LoraOptions,
    summary="low-rank adapters on the UNet, optionally the text encoder (Hu et al. 2021)",
    # measured on the shipped model, 8 images of an unseen shape (benchmarks/personalize_defaults.py, docs/training.md)
    recipe=dict(learning_rate=5e-4, adam_weight_decay=1e-2, max_steps=1000, caption_dropout=0.0))
