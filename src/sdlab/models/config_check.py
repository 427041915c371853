"""Checks of a UNet's or VAE's config.json before diffusers builds the model from it, so that a
bad value is named with its file and field, not met later as a deep TypeError or a shape error."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError

POSITIVE_INT = "a positive integer"
POSITIVE_INTS = "a positive integer or a list of them, one per block"

# field -> (what it must be, may it be null); fields not listed are left to diffusers
UNET_FIELDS = {
    "sample_size": (POSITIVE_INT, False), "in_channels": (POSITIVE_INT, False), "out_channels": (POSITIVE_INT, False),
    "block_out_channels": ("a list of positive integers", False), "down_block_types": ("a list of block names", False),
    "up_block_types": ("a list of block names", False), "layers_per_block": (POSITIVE_INTS, False),
    "cross_attention_dim": (POSITIVE_INTS, False), "attention_head_dim": (POSITIVE_INTS, True),
    "num_attention_heads": (POSITIVE_INTS, True), "transformer_layers_per_block": (POSITIVE_INTS, True),
    "norm_num_groups": (POSITIVE_INT, True), "norm_eps": ("a positive number", False),
}
VAE_FIELDS = {
    "in_channels": (POSITIVE_INT, False), "out_channels": (POSITIVE_INT, False),
    "latent_channels": (POSITIVE_INT, False), "block_out_channels": ("a list of positive integers", False),
    "down_block_types": ("a list of block names", False), "up_block_types": ("a list of block names", False),
    "layers_per_block": (POSITIVE_INT, False), "norm_num_groups": (POSITIVE_INT, False),
    "scaling_factor": ("a positive number", False),
}


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _fits(value, kind: str) -> bool:
    if kind == POSITIVE_INT:
        return _is_pos_int(value)
    if kind == POSITIVE_INTS:
        return _is_pos_int(value) or (isinstance(value, list) and bool(value) and all(map(_is_pos_int, value)))
    if kind == "a list of positive integers":
        return isinstance(value, list) and bool(value) and all(map(_is_pos_int, value))
    if kind == "a list of block names":
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def check_config(config, path: str | Path, fields: dict) -> None:
    """Raise ModelLoadError naming `path` and the field for the first value out of its range."""
    if not isinstance(config, dict):
        raise ModelLoadError(f"'{path}' must hold a JSON object, got {type(config).__name__}")
    for name, (kind, nullable) in fields.items():
        if name in config and not (config[name] is None and nullable) and not _fits(config[name], kind):
            raise ModelLoadError(f"'{path}': field '{name}' must be {kind}, got {config[name]!r}")
    blocks = config.get("block_out_channels")
    for name, value in config.items():
        if name in fields and isinstance(value, list) and blocks and len(value) != len(blocks):
            raise ModelLoadError(f"'{path}': field '{name}' has {len(value)} entries; it needs one per block "
                                 f"({len(blocks)}, as block_out_channels)")
    groups = config.get("norm_num_groups")
    if groups and blocks and any(c % groups for c in blocks):
        raise ModelLoadError(f"'{path}': field 'norm_num_groups' ({groups}) must divide every block_out_channels "
                             f"value {blocks}")
