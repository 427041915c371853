"""Random-weight Stable Diffusion folders with the real SD 1.5 / 2.1 architectures.

For benchmarks and tests at real scale without downloading weights: the shipped configs
(models/configs) and the shipped CLIP BPE vocabulary give a diffusers folder that loads
like a real checkpoint. `build_random_model("sd15", out, sample_size=8)` shrinks only the
default image size (the weights are the full architecture).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io.atomic import atomic_dir
from .single_file import CONFIG_ROOT, read_json
from .text_encoder_file import save_text_encoder
from .tokenizer import write_clip_tokenizer_files

ARCHITECTURES = ("sd15", "sd21-base", "sd21-v")


def build_random_model(name: str, out_dir: str | Path, *, seed: int = 0, dtype: torch.dtype = torch.float16,
                       sample_size: int | None = None) -> Path:
    """Write a diffusers folder of architecture `name` with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
    src, out_dir = CONFIG_ROOT / name, Path(out_dir)
    torch.manual_seed(seed)
    unet_cfg = read_json(src / "unet" / "config.json")
    if sample_size is not None:
        unet_cfg["sample_size"] = sample_size
    unet = UNet2DConditionModel.from_config(unet_cfg)
    vae = AutoencoderKL.from_config(read_json(src / "vae" / "config.json"))
    text = CLIPTextModel(CLIPTextConfig.from_dict(read_json(src / "text_encoder" / "config.json")))
    if dtype != torch.float32:
        unet, vae, text = unet.to(dtype), vae.to(dtype), text.to(dtype)
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        unet.save_pretrained(tmp / "unet")
        vae.save_pretrained(tmp / "vae")
        save_text_encoder(text, tmp / "text_encoder")
        tok_cfg = read_json(src / "tokenizer" / "tokenizer_config.json")
        write_clip_tokenizer_files(tmp / "tokenizer", pad_token=tok_cfg.get("pad_token", "<|endoftext|>"))
        shutil.copytree(src / "scheduler", tmp / "scheduler")
        index = read_json(src / "model_index.json")
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    return out_dir
