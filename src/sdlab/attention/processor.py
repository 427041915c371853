"""The one attention hook: a diffusers attention processor that can show and edit attention.

`ControlledAttnProcessor` does what diffusers' `AttnProcessor2_0` does (projections, optional
group/spatial norm, residual, output rescale). When its controller wants this layer's
probabilities it computes them explicitly,

    P = softmax(Q K^T * scale)          (B, heads, queries, keys)

hands them to `controller(P, is_cross, place_in_unet, layer=LayerInfo)` and uses what comes back
for `P V`; otherwise it calls `torch.nn.functional.scaled_dot_product_attention`, so a layer
that nothing records costs what it always did. Installed with `unet.set_attn_processor` (see
`sdlab.attention.attention_control`), one instance per layer so each knows its name and place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .options import PLACES  # noqa: F401  (declared torch-free, for `sdlab attend --help`)


@dataclass(frozen=True)
class LayerInfo:
    """Where an attention layer sits: its module name ("up_blocks.1.attentions.0.transformer_blocks.0.attn2"),
    place in the UNet ("down", "mid", "up"), whether it attends to the text, its head count and
    its number of queries (pixels of its feature map)."""

    name: str
    place: str
    is_cross: bool
    heads: int
    queries: int


def place_of(name: str) -> str:
    """"down", "mid" or "up" for a UNet attention module name (anything else: "other")."""
    return PLACES.get(name.split(".")[0], "other")


def _attention_mask(attn, mask, keys: int, batch: int) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    mask = attn.prepare_attention_mask(mask, keys, batch)
    return mask.view(batch, attn.heads, -1, mask.shape[-1])


def explicit_attention(attn, q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """softmax(Q K^T * attn.scale + mask) over keys, (B, heads, queries, keys), with diffusers'
    upcast rules; returned in the query dtype."""
    dtype = q.dtype
    if attn.upcast_attention:
        q, k = q.float(), k.float()
    scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    if attn.upcast_softmax:
        scores = scores.float()
    return scores.softmax(dim=-1).to(dtype)


class ControlledAttnProcessor:
    """A diffusers attention processor with an optional controller (see module doc)."""

    def __init__(self, controller=None, name: str = "", place: Optional[str] = None):
        self.controller = controller
        self.name = name
        self.place = place or place_of(name)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(b, channels, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, keys = context.shape[0], context.shape[1]
        mask = _attention_mask(attn, attention_mask, keys, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        info = LayerInfo(self.name, self.place, is_cross, attn.heads, q.shape[2])
        if self.controller is not None and self.controller.wants(info):
            probs = explicit_attention(attn, q, k, mask)
            probs = self.controller(probs, is_cross, self.place, layer=info)
            out = torch.matmul(probs.to(v.dtype), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                                 scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
