"""A separately trained VAE swapped into a model (AUTOMATIC1111's "SD VAE" setting, the
`vae=` of a diffusers pipeline): a diffusers AutoencoderKL folder, a model folder (its `vae/`),
or one VAE file in the original LDM layout (`encoder.*`, `decoder.*`, optionally under
`first_stage_model.`) or in diffusers' layout, as .safetensors or a weights-only .pt/.ckpt."""

from __future__ import annotations

from pathlib import Path

import torch

from sdlab.errors import ModelLoadError
from sdlab.models import checkpoint as ckpt
from sdlab.models import single_file as sf
from sdlab.models.hashing import sha256_file, weights_file

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def vae_names(folders) -> list[str]:
    """The VAEs a folder offers, as AUTOMATIC1111's models/VAE does: its .safetensors / .pt /
    .ckpt files and AutoencoderKL folders, by name (the first folder wins a name)."""
    from sdlab.io.paths import offered_names

    return offered_names(folders, weights_entry)


def find_vae(name: str, folders) -> Path:
    """The entry `name` of the first of `folders` that offers it (ConfigError naming the choices)."""
    from sdlab.io.paths import find_offered

    return find_offered(name, folders, weights_entry, "VAE", "sdlab serve --vae-dir")


def weights_entry(entry: Path) -> bool:
    """A weights file (.safetensors, .pt, .ckpt, ...) or a folder with a config.json (a diffusers model part)."""
    if entry.is_dir():
        return (entry / "config.json").is_file()
    return entry.suffix.lower() in ckpt.SAFETENSORS_SUFFIXES + ckpt.PICKLE_SUFFIXES


def load_vae(path: str | Path, like, dtype: torch.dtype):
    """(vae, record) for `path`; `like` is the model's own VAE, whose latent space the new one
    must share. The record names the file and its A1111 hash for infotext ("VAE", "VAE hash")."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"VAE path '{p}' does not exist")
    if p.is_dir():
        vae, weights = _load_folder(p, dtype)
    else:
        vae, weights = _load_file(p, like.config, dtype), p
    _check_fits(vae, like, p)
    folder = weights.parent
    name = p.name if p.is_file() else f"{folder.parent.name}/vae" if folder.name == "vae" else folder.name
    return vae, {"name": name, "hash": sha256_file(weights)[:10]}


def _load_folder(p: Path, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    folder = p / "vae" if (p / "model_index.json").is_file() else p
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"'{p}' is not a VAE: give an AutoencoderKL folder (config.json and weights), "
                             "a diffusers model folder, or a VAE .safetensors file")
    config = sf.read_json(folder / "config.json")
    klass = config.get("_class_name") or (f"{config['model_type']} model" if config.get("model_type") else None)
    if klass != "AutoencoderKL":
        raise ModelLoadError(f"'{folder}' holds a {klass or 'model of unknown type'}, not an AutoencoderKL")
    weights = weights_file(folder, WEIGHT_FILES)
    if weights is None:
        raise ModelLoadError(f"VAE folder '{folder}' has no weights ({' or '.join(WEIGHT_FILES)})")
    try:
        return AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True), weights
    except Exception as exc:  # diffusers raises several types for a bad folder
        raise ModelLoadError(f"cannot load the VAE from '{folder}': {ckpt.first_line(exc)}") from exc


def _load_file(p: Path, config, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    if p.suffix.lower() not in ckpt.SAFETENSORS_SUFFIXES + ckpt.PICKLE_SUFFIXES:
        raise ModelLoadError(f"'{p}' is not a VAE file: give a .safetensors, .pt or .ckpt file, an AutoencoderKL "
                             "folder or a diffusers model folder")
    state = ckpt.read_state_dict(p)
    if any(k.startswith(("decoder.up_blocks.", "decoder.mid_block.")) for k in state):      # diffusers layout
        model = sf.empty_model(lambda: AutoencoderKL.from_config(config))
        return sf.materialize(model, state, dtype, "VAE")
    if not any(k.startswith(("decoder.", "first_stage_model.decoder.")) for k in state):
        raise ModelLoadError(f"'{p}' is not a VAE file: it has no decoder weights (decoder.* or "
                             "first_stage_model.decoder.*)")
    return sf.build_vae(state, dict(config), dtype)


def _check_fits(vae, like, p: Path) -> None:
    """Same latent channels and downsampling as the model's VAE, or the UNet's latents mean nothing to it."""
    mine, theirs = like.config, vae.config
    if mine.latent_channels != theirs.latent_channels or \
            len(mine.block_out_channels) != len(theirs.block_out_channels):
        raise ModelLoadError(
            f"VAE '{p}' does not fit this model: {theirs.latent_channels} latent channels at 1/"
            f"{2 ** (len(theirs.block_out_channels) - 1)} size, the model's VAE has {mine.latent_channels} "
            f"at 1/{2 ** (len(mine.block_out_channels) - 1)}")


VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def describe_vae(path: str | Path) -> dict | None:
    """What `sdlab info` says of a VAE folder or VAE file (.safetensors, or a weights-only
    .pt/.ckpt such as A1111's `*.vae.pt`); None for anything else."""
    import math

    p = Path(path)
    config = None
    if p.is_dir() and (p / "config.json").is_file():
        config = sf.read_json(p / "config.json")
        if config.get("_class_name") != "AutoencoderKL":
            return None
        p = weights_file(p, WEIGHT_FILES)
    if p is None or not p.is_file() or p.suffix.lower() not in ckpt.SAFETENSORS_SUFFIXES + ckpt.PICKLE_SUFFIXES + (".bin",):
        return None
    shapes = _shapes(p)
    bare = {k.removeprefix("first_stage_model."): v for k, v in shapes.items()}
    if not bare or not all(k.startswith(VAE_PREFIXES) for k in bare) or "decoder.conv_in.weight" not in bare:
        return None
    layout = "diffusers" if any(k.startswith("decoder.up_blocks.") for k in bare) else "LDM"
    out = {"file": str(p), "kind": f"VAE ({layout} layout)", "hash": sha256_file(p)[:10],
           "latent_channels": bare["decoder.conv_in.weight"][1],
           "parameters": sum(math.prod(s) for s in shapes.values()),
           "decoder_params": sum(math.prod(s) for k, s in bare.items() if k.startswith(("decoder.", "post_quant")))}
    if config is not None:
        out["downsampling"] = 2 ** (len(config["block_out_channels"]) - 1)
        out["scaling_factor"] = config.get("scaling_factor")
    out["use"] = "sdlab generate ... --vae PATH"
    return out


def _shapes(p: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape: from the header of a .safetensors file, else the weights-only load."""
    if p.suffix.lower() in ckpt.SAFETENSORS_SUFFIXES:
        from sdlab.io.tensor_files import safetensors_shapes

        return safetensors_shapes(p)
    try:
        state = ckpt.unwrap_state_dict(ckpt.load_pickled(p), p)
    except ModelLoadError:
        return {}
    return {k: tuple(v.shape) for k, v in state.items()}
