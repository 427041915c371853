"""Export diffusers SD modules to the original single-file (CompVis/Stability LDM) key layout.

diffusers ships only the original -> diffusers direction inside the package; this is the
reverse mapping, so a model trained here can be saved as one ``.safetensors`` file that
AUTOMATIC1111-style tools (and sdlab's own single-file loader) read.
"""

from __future__ import annotations

import re

import torch

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
