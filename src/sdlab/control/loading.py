"""Loading ControlNets (Zhang et al. 2023): a diffusers `ControlNetModel` folder, or one file in the
diffusers layout (e.g. `sdlab train controlnet`'s) or the original (ldm) layout of the shared
`control_*.safetensors` files, read by diffusers' `from_single_file` with a config derived from
the base UNet (so nothing is fetched)."""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path

import torch

from ..errors import ModelLoadError

ALLOWED = ("a diffusers ControlNetModel folder (config.json + weights), or a .safetensors/.ckpt/.pt/.pth "
           "ControlNet file in the diffusers or the original (ldm) layout")
DIFFUSERS_KEY = "controlnet_cond_embedding.conv_in.weight"
LDM_KEY = "input_hint_block.0.weight"
FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def config_from_unet(unet, conditioning_channels: int = 3) -> dict:
    """The ControlNetModel config that matches `unet` (as ControlNetModel.from_unet builds it)."""
    from diffusers import ControlNetModel

    params = set(inspect.signature(ControlNetModel.__init__).parameters)
    cfg = {k: v for k, v in dict(unet.config).items() if k in params and not k.startswith("_")}
    cfg.pop("in_channels", None)
    return {**cfg, "in_channels": 4 if int(unet.config.in_channels) == 9 else unet.config.in_channels,
            "conditioning_channels": conditioning_channels}


def controlnet_from_unet(unet, **kwargs):
    """A ControlNetModel initialised from `unet` (Zhang et al. 2023: a copy of its encoder), as
    diffusers' `ControlNetModel.from_unet` builds it, with the UNet's `addition_embed_type_num_heads`,
    which from_unet leaves at its default 64 (a text-embedding UNet narrower than 64 heads would fail)."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(unet, **kwargs)
    heads = getattr(unet.config, "addition_embed_type_num_heads", None)
    if heads is None or heads == net.config.addition_embed_type_num_heads:
        return net
    config = {k: v for k, v in net.config.items() if not k.startswith("_")}   # "_use_default_values" would undo it
    fixed = ControlNetModel.from_config({**config, "addition_embed_type_num_heads": heads})
    fixed.load_state_dict(net.state_dict())
    return fixed


def load_controlnet(path: str | Path, unet, dtype: torch.dtype | None = None):
    """The ControlNetModel at `path` (folder or file), in eval mode, in `dtype` (default the UNet's)."""
    p = Path(path).expanduser()
    dtype = dtype or next(unet.parameters()).dtype
    if p.is_dir():
        model = _load_folder(p)
    elif p.is_file() and p.suffix.lower() in FILE_SUFFIXES:
        model = _load_file(p, unet)
    elif p.is_file():
        raise ModelLoadError(f"--controlnet '{p}': unknown file type '{p.suffix}'; allowed: {ALLOWED}")
    else:
        raise ModelLoadError(f"--controlnet '{p}' does not exist; allowed: {ALLOWED}")
    return model.to(dtype=dtype).eval().requires_grad_(False)


def _load_folder(p: Path):
    from diffusers import ControlNetModel

    cfg = p / "config.json"
    if not cfg.is_file() and (p / "controlnet" / "config.json").is_file():
        p, cfg = p / "controlnet", p / "controlnet" / "config.json"
    try:
        name = json.loads(cfg.read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--controlnet '{p}' is no ControlNet folder ({exc.__class__.__name__} reading "
                             f"config.json); allowed: {ALLOWED}") from None
    if name != "ControlNetModel":
        raise ModelLoadError(f"--controlnet '{p}' holds a {name}, not a ControlNetModel; allowed: {ALLOWED}")
    try:
        return ControlNetModel.from_pretrained(p)
    except Exception as exc:  # diffusers raises several types for missing or broken weights
        raise ModelLoadError(f"--controlnet '{p}': {str(exc).strip().splitlines()[0]}") from None


def _load_file(p: Path, unet):
    from diffusers import ControlNetModel

    from ..models.checkpoint import read_state_dict

    state = read_state_dict(p)
    if DIFFUSERS_KEY in state:
        model = ControlNetModel.from_config(_file_config(state, unet))
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:       # a size mismatch
            raise ModelLoadError(f"--controlnet '{p}' does not fit this model's UNet: "
                                 f"{str(exc).strip().splitlines()[-1].strip()}") from None
        _check_load(result, p)
        return model
    if any(k.endswith(LDM_KEY) for k in state):
        return _load_ldm(p, state, unet)
    raise ModelLoadError(f"--controlnet '{p}' is no ControlNet file (no '{DIFFUSERS_KEY}' or '{LDM_KEY}' "
                         f"weights); allowed: {ALLOWED}")


def _file_config(state: dict, unet) -> dict:
    """The config of a diffusers-layout ControlNet file: the UNet's, with the conditioning
    embedding's channels read from the weights (conv_in, then every second block's output)."""
    channels = [int(state[DIFFUSERS_KEY].shape[0])]
    while (key := f"controlnet_cond_embedding.blocks.{2 * len(channels) - 1}.weight") in state:
        channels.append(int(state[key].shape[0]))
    cfg = config_from_unet(unet, int(state[DIFFUSERS_KEY].shape[1]))
    return {**cfg, "conditioning_embedding_out_channels": tuple(channels)}


def _check_load(result, p: Path) -> None:
    missing, unexpected = result
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise ModelLoadError(f"--controlnet '{p}' does not fit this model's UNet ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected weights, e.g. '{bad}')")


def _load_ldm(p: Path, state: dict, unet):
    from diffusers import ControlNetModel

    hint = next(v for k, v in state.items() if k.endswith(LDM_KEY))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"_class_name": "ControlNetModel", **config_from_unet(unet, int(hint.shape[1]))}
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        try:
            return ControlNetModel.from_single_file(str(p), config=tmp, local_files_only=True)
        except Exception as exc:  # a layout diffusers' converter does not map onto this UNet
            raise ModelLoadError(f"--controlnet '{p}' does not fit this model's UNet: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
