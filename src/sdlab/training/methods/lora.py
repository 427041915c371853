"""LoRA (Hu et al. 2021): low-rank adapters on the UNet's attention projections (and
optionally the text encoder's), trained with peft; the base weights stay frozen. Optionally
with DreamBooth's prior preservation (`prior.py`).

Saves `lora/pytorch_lora_weights.safetensors` (diffusers/peft: what
`StableDiffusionPipeline.load_lora_weights` reads) and `lora_kohya.safetensors` (kohya /
AUTOMATIC1111 keys with `.alpha`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...config import _check_float, _check_int
from ...models import lora as lora_files
from .base import DiffusionMethod
from .prior import PriorOptions, PriorPreservation

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class LoraOptions(PriorOptions):
    """Adapter shape, and (off by default) DreamBooth's prior preservation, as diffusers'
    DreamBooth-LoRA script offers it."""

    prior_preservation: bool = False
    rank: int = 4
    alpha: float | None = None          # None: alpha = rank (scale 1)
    text_encoder: bool = False

    def __post_init__(self):
        super().__post_init__()
        _check_int("rank", self.rank, 1, 1024)
        if self.alpha is not None:
            _check_float("alpha", self.alpha, 1e-6, 1e6)


class LoRA(PriorPreservation, DiffusionMethod):
    name = "lora"
    unet_adapters = True
    adapters_on_cast_base = True

    def __init__(self, options: LoraOptions | None = None):
        self.options = options or LoraOptions()
        self.text_adapters = self.options.text_encoder

    def lora_config(self, targets):
        from peft import LoraConfig

        o = self.options
        return LoraConfig(r=o.rank, lora_alpha=o.alpha or o.rank, init_lora_weights="gaussian",
                          target_modules=list(targets))

    def prepare_modules(self) -> None:
        self.c.unet.add_adapter(self.lora_config(UNET_TARGETS))
        if self.text_adapters:
            self.c.text_encoder.add_adapter(self.lora_config(TEXT_TARGETS))
        self.prepare_prior()

    def layers(self) -> dict[str, lora_files.LoraLayer]:
        """The trained adapters as {"unet.<module>": LoraLayer}."""
        from peft.utils import get_peft_model_state_dict

        alpha = float(self.options.alpha or self.options.rank)
        layers = {}
        for comp in ("unet", "text_encoder"):
            module = getattr(self.c, comp)
            if module not in self.trainable_modules():
                continue
            sd = get_peft_model_state_dict(module)
            for key, down in sd.items():
                if key.endswith(".lora_A.weight"):
                    stem = key[: -len(".lora_A.weight")]
                    up = sd[stem + ".lora_B.weight"]
                    layers[f"{comp}.{stem}"] = lora_files.LoraLayer(down.detach().float().cpu(),
                                                                    up.detach().float().cpu(), alpha)
        return layers

    def save(self, output_dir: Path) -> list[Path]:
        layers = self.layers()
        out = Path(output_dir)
        return [lora_files.write(out / "lora" / "pytorch_lora_weights.safetensors", layers, "diffusers"),
                lora_files.write(out / "lora_kohya.safetensors", layers, "kohya")]
