"""Export diffusers SD modules to the original single-file (CompVis/Stability LDM) key layout.

diffusers ships only the original -> diffusers direction inside the package; this is the
reverse mapping, so a model trained here can be saved as one ``.safetensors`` file that
AUTOMATIC1111-style tools (and sdlab's own single-file loader) read (`sdlab convert MODEL
out.safetensors --to single-file`), with its LDM config as ``out.yaml`` beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from sdlab.errors import ConfigError
from sdlab.io.atomic import atomic_save
from sdlab.models.checkpoint import CLIP_PREFIX, OPENCLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
           ("conv_shortcut", "skip_connection"))
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _rename(text: str, pairs) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def unet_to_original(state: dict, layers_per_block: int) -> dict:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` keys."""
    per = layers_per_block + 1
    up_with_attn = {int(m.group(1)) for k in state
                    if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for key, value in state.items():
        head, _, param = key.rpartition(".")
        if head in _UNET_FIXED:
            new = f"{_UNET_FIXED[head]}.{param}"
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.0.{_rename(m[3], _RESNET)}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            new = f"input_blocks.{1 + int(m[1]) * per + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"output_blocks.{int(m[1]) * per + int(m[2])}.0.{_rename(m[3], _RESNET)}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            new = f"output_blocks.{int(m[1]) * per + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            slot = 2 if int(m[1]) in up_with_attn else 1
            new = f"output_blocks.{int(m[1]) * per + layers_per_block}.{slot}.conv.{m[2]}"
        else:
            raise ValueError(f"no original-layout name for UNet key '{key}'")
        out[UNET_PREFIX + new] = value
    return out


_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
             ("to_out.0", "proj_out"))


def _nin(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def vae_to_original(state: dict, n_blocks: int) -> dict:
    """diffusers AutoencoderKL keys -> ``first_stage_model.*`` keys (attention as 1x1 convs)."""
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_nin(m[3])}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            block = n_blocks - 1 - int(m[1])
            new = f"decoder.up.{block}.block.{m[2]}.{_nin(m[3])}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            new = f"decoder.up.{n_blocks - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_nin(m[3])}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            new = f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN)}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def clip_to_original(state: dict) -> dict:
    """transformers CLIPTextModel keys -> SD 1.x ``cond_stage_model.transformer.text_model.*``."""
    out = {CLIP_PREFIX + "text_model." + k.removeprefix("text_model."): v for k, v in state.items()}
    n_pos = next(v for k, v in state.items() if k.endswith("position_embedding.weight")).shape[0]
    out[CLIP_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(n_pos)[None]
    return out


_OPENCLIP = (("embeddings.token_embedding.weight", "token_embedding.weight"),
             ("embeddings.position_embedding.weight", "positional_embedding"),
             ("final_layer_norm", "ln_final"), ("encoder.layers.", "transformer.resblocks."),
             ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
             ("self_attn.out_proj", "attn.out_proj"),
             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"))


def openclip_to_original(state: dict, extra_layers: int = 1, generator=None) -> dict:
    """CLIPTextModel keys -> SD 2.x ``cond_stage_model.model.*`` (OpenCLIP, fused q/k/v).

    SD 2.x files hold all 24 OpenCLIP layers and a text projection, though SD uses 23 layers;
    ``extra_layers`` random layers and a random projection are added to mimic that.
    """
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out, fused = {}, {}
    for key, value in state.items():
        if m := re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        out[OPENCLIP_PREFIX + _rename(key, _OPENCLIP)] = value
    for (layer, kind), qkv in fused.items():
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"{OPENCLIP_PREFIX}transformer.resblocks.{layer}.attn.{name}"] = torch.cat(
            [qkv["q"], qkv["k"], qkv["v"]])
    n_layers = len({layer for layer, _ in fused})
    last = f"{OPENCLIP_PREFIX}transformer.resblocks.{n_layers - 1}."
    for extra in range(n_layers, n_layers + extra_layers):
        for key in [k for k in out if k.startswith(last)]:
            new = key.replace(last, f"{OPENCLIP_PREFIX}transformer.resblocks.{extra}.")
            out[new] = torch.randn(out[key].shape, generator=generator).to(out[key].dtype)
    width = state["embeddings.token_embedding.weight"].shape[1]
    out[OPENCLIP_PREFIX + "text_projection"] = torch.randn(width, width, generator=generator)
    return out


def original_state_dict(unet, vae, text_encoder, family: str) -> dict:
    """One original-layout state dict from diffusers modules; ``family`` is "sd1" or "sd2"."""
    sd = unet_to_original(unet.state_dict(), unet.config.layers_per_block)
    sd.update(vae_to_original(vae.state_dict(), len(vae.config.down_block_types)))
    text = text_encoder.state_dict()
    sd.update(clip_to_original(text) if family == "sd1" else openclip_to_original(text))
    return {k: v.detach().contiguous() for k, v in sd.items()}


# --- a whole model as one file, with the LDM config A1111 reads beside it ---------------------

def export_family(text_encoder) -> str:
    """"sd2" for an OpenCLIP-style text encoder (gelu, as SD 2.x), else "sd1" (CLIP, quick_gelu)."""
    return "sd2" if getattr(text_encoder.config, "hidden_act", "") == "gelu" else "sd1"


def unsupported(unet_cfg: dict, vae_cfg: dict) -> list[str]:
    """What the original (CompVis LDM) layout and code cannot hold of a model, in words; empty
    for SD 1.x/2.x-style architectures of any size."""
    reasons = []
    for name, cfg in (("UNet", unet_cfg), ("VAE", vae_cfg)):
        if cfg.get("norm_num_groups", 32) != 32:
            reasons.append(f"its {name} normalises with {cfg['norm_num_groups']} groups (LDM: 32)")
    for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim"):
        if unet_cfg.get(key) is not None:
            reasons.append(f"its UNet has {key}={unet_cfg[key]!r}")
    base = unet_cfg["block_out_channels"][0]
    if any(c % base for c in unet_cfg["block_out_channels"]) or \
            any(c % vae_cfg["block_out_channels"][0] for c in vae_cfg["block_out_channels"]):
        reasons.append("its channel counts are not multiples of the first block's")
    heads = unet_cfg.get("num_attention_heads") or unet_cfg.get("attention_head_dim")
    if isinstance(heads, (list, tuple)) and not unet_cfg.get("use_linear_projection") and len(set(heads)) > 1:
        reasons.append("its UNet levels have different head counts without linear projections")
    return reasons


def check_exportable(unet_cfg: dict, vae_cfg: dict, source) -> None:
    """ConfigError (one line) naming what `source`'s architecture has that the layout has not."""
    if reasons := unsupported(unet_cfg, vae_cfg):
        raise ConfigError(f"'{source}' cannot be written in the single-file (CompVis LDM) layout: "
                          f"{'; '.join(reasons)}; only SD 1.x/2.x-style architectures (of any size) can")


def ldm_config(unet_cfg: dict, vae_cfg: dict, sched_cfg: dict, family: str) -> dict:
    """The original `v1-inference.yaml`-style config of a model (what A1111 reads from
    `NAME.yaml` beside a checkpoint, and diffusers' `from_single_file(original_config=...)`)."""
    base, mults = unet_cfg["block_out_channels"][0], unet_cfg["block_out_channels"]
    heads = unet_cfg.get("num_attention_heads") or unet_cfg.get("attention_head_dim")
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(mults)
    linear = bool(unet_cfg.get("use_linear_projection"))
    unet = {"use_checkpoint": False, "image_size": unet_cfg["sample_size"], "in_channels": unet_cfg["in_channels"],
            "out_channels": unet_cfg["out_channels"], "model_channels": base,
            "attention_resolutions": [2 ** i for i, b in enumerate(unet_cfg["down_block_types"]) if "CrossAttn" in b],
            "num_res_blocks": unet_cfg["layers_per_block"], "channel_mult": [c // base for c in mults],
            "use_spatial_transformer": True, "transformer_depth": unet_cfg.get("transformer_layers_per_block", 1),
            "context_dim": unet_cfg["cross_attention_dim"], "legacy": False,
            **({"num_head_channels": base // heads[0], "use_linear_in_transformer": True} if linear
               else {"num_heads": heads[0]}),
            **({"use_fp16": False} if family == "sd2" else {})}
    vbase = vae_cfg["block_out_channels"][0]
    ddconfig = {"double_z": True, "z_channels": vae_cfg["latent_channels"], "resolution": vae_cfg.get("sample_size", 256),
                "in_channels": vae_cfg["in_channels"], "out_ch": vae_cfg["out_channels"], "ch": vbase,
                "ch_mult": [c // vbase for c in vae_cfg["block_out_channels"]],
                "num_res_blocks": vae_cfg["layers_per_block"], "attn_resolutions": [], "dropout": 0.0}
    cond = ({"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"} if family == "sd1" else
            {"target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
             "params": {"freeze": True, "layer": "penultimate"}})
    params = {"linear_start": sched_cfg.get("beta_start", 0.00085), "linear_end": sched_cfg.get("beta_end", 0.012),
              "num_timesteps_cond": 1, "log_every_t": 200, "timesteps": sched_cfg.get("num_train_timesteps", 1000),
              "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": unet_cfg["sample_size"],
              "channels": unet_cfg["in_channels"], "cond_stage_trainable": False, "conditioning_key": "crossattn",
              "monitor": "val/loss_simple_ema", "scale_factor": vae_cfg.get("scaling_factor", 0.18215),
              "use_ema": False,
              **({"parameterization": "v"} if sched_cfg.get("prediction_type") == "v_prediction" else {}),
              "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
              "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL",
                                     "params": {"embed_dim": vae_cfg["latent_channels"], "monitor": "val/rec_loss",
                                                "ddconfig": ddconfig, "lossconfig": {"target": "torch.nn.Identity"}}},
              "cond_stage_config": cond}
    return {"model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                      "params": params}}


def export_single_file(components, out) -> tuple:
    """Write `components` (a loaded model) as one original-layout `.safetensors` and its LDM
    config as `.yaml` beside it; neither may exist. Returns (file, yaml, family)."""
    unet_cfg, vae_cfg = dict(components.unet.config), dict(components.vae.config)
    check_exportable(unet_cfg, vae_cfg, components.source)
    out = Path(out)
    side = out.with_suffix(".yaml")
    for path in (out, side):
        if path.exists() or path.is_symlink():
            raise ConfigError(f"'{path}' exists; choose another output file (DST and DST.yaml are written) "
                              "or remove it")
    family = export_family(components.text_encoder)
    state = original_state_dict(components.unet, components.vae, components.text_encoder, family)
    config = ldm_config(unet_cfg, vae_cfg, components.scheduler_config, family)
    atomic_save(out, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_save(side, lambda tmp: Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False)))
    return out, side, family
