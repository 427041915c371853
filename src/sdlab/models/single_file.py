"""Build diffusers/transformers modules from an original-layout SD 1.x/2.x state dict.

Key renaming is done by diffusers' own single-file converters
(``diffusers.loaders.single_file_utils``); this module supplies the configs (shipped under
``configs/`` or a user folder), checks that every weight is present, and loads strictly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from sdlab.errors import ModelLoadError
from sdlab.models.checkpoint import UNET_PREFIX

CONFIG_ROOT = Path(__file__).parent / "configs"


def read_json(path: Path) -> dict:
    """Read a JSON config, raising ModelLoadError when missing or malformed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"config file '{path}' is missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"config file '{path}' is not valid JSON: {exc}") from exc


def shipped_config_dir(family: str, prediction_type: str) -> Path:
    """The packaged config folder: sd15, sd21-base (epsilon, 512) or sd21-v (v, 768)."""
    if family == "sd1":
        return CONFIG_ROOT / "sd15"
    return CONFIG_ROOT / ("sd21-v" if prediction_type == "v_prediction" else "sd21-base")


def empty_model(factory):
    """Run ``factory()`` with parameters on the meta device (no memory, no random init)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory()


def materialize(model, state: dict, dtype: torch.dtype, label: str):
    """Assign ``state`` to an empty ``model`` after checking that the key sets match exactly."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelLoadError(
            f"checkpoint does not fit the {label} architecture: {'; '.join(detail)}")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        reason = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln),
                      str(exc).splitlines()[0])
        raise ModelLoadError(f"checkpoint does not fit the {label} architecture: {reason}") from exc
    return model.eval()


def build_unet(state: dict, config: dict, dtype: torch.dtype):
    """UNet2DConditionModel from ``model.diffusion_model.*`` weights."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = dict(config)
    conv_in = state.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:  # inpainting checkpoints take 9 input channels
        config["in_channels"] = int(conv_in.shape[1])
    converted = convert_ldm_unet_checkpoint(state, config)
    model = empty_model(lambda: UNet2DConditionModel.from_config(config))
    return materialize(model, converted, dtype, "UNet")


def build_vae(state: dict, config: dict, dtype: torch.dtype):
    """AutoencoderKL from ``first_stage_model.*`` weights."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    converted = convert_ldm_vae_checkpoint(state, config)
    model = empty_model(lambda: AutoencoderKL.from_config(config))
    return materialize(model, converted, dtype, "VAE")


def build_text_encoder(state: dict, config_dir: Path, family: str, dtype: torch.dtype):
    """CLIPTextModel from CLIP (SD 1.x) or OpenCLIP (SD 2.x, last layer dropped) weights."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint,
                                                     convert_open_clip_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_dict(read_json(config_dir / "config.json"))
    model = empty_model(lambda: CLIPTextModel(config))
    if family == "sd1":
        converted = convert_ldm_clip_checkpoint(state)
    else:
        converted = convert_open_clip_checkpoint(model, state)
    wrapped = any(k.startswith("text_model.") for k in model.state_dict())
    converted = _to_model_keys(converted, config.num_hidden_layers, wrapped)
    return materialize(model, converted, dtype, "text encoder")


def _to_model_keys(converted: dict, n_layers: int, wrapped: bool) -> dict:
    """Match this transformers version's key names; drop weights SD does not use."""
    out = {}
    for key, value in converted.items():
        bare = key.removeprefix("text_model.")
        if bare.endswith("position_ids") or bare.startswith("text_projection"):
            continue
        layer = re.match(r"encoder\.layers\.(\d+)\.", bare)
        if layer and int(layer.group(1)) >= n_layers:
            continue  # SD 2.x uses the penultimate OpenCLIP layer: the 24th is not loaded
        out[("text_model." + bare) if wrapped else bare] = value
    return out
