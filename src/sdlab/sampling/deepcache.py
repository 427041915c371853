"""Step caching in the style of DeepCache (Ma et al. 2023): reuse the deep UNet features.

Adjacent sampling steps change the deep, low-resolution features of the UNet little. Every
`interval`-th call runs the full UNet and keeps the input of the last up block (the output of
everything deeper); the calls in between run only the shallow branch (conv_in, the first
down block without its downsampler, the last up block fed with the cached features) and the
output convolution. The cache resets by itself when a new loop starts (the timestep rises
or the batch shape changes).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from ..errors import ConfigError


class DeepCacheUNet(nn.Module):
    """Wraps a diffusers `UNet2DConditionModel`; called like it (`.sample` on the output)."""

    def __init__(self, unet: nn.Module, interval: int):
        super().__init__()
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"deep-cache interval must be an integer >= 1 (1 = no caching), got {interval!r}")
        self.unet, self.interval = unet, interval
        self.calls, self._cached, self._last_t, self._shape = 0, None, None, None
        self.full_calls = 0
        unet.up_blocks[-1].register_forward_pre_hook(self._capture, with_kwargs=True)

    def __getattr__(self, name):
        """Everything else (config, dtype, set_attn_processor, ...) is the wrapped UNet's."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)

    def _capture(self, module, args, kwargs):
        self._cached = (kwargs.get("hidden_states", args[0] if args else None)).detach()

    def reset(self) -> None:
        self.calls, self._cached, self._last_t, self._shape = 0, None, None, None

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        t = float(torch.as_tensor(timestep).float().max())
        if self._shape != tuple(sample.shape) or (self._last_t is not None and t > self._last_t):
            self.reset()
        self._shape, self._last_t = tuple(sample.shape), t
        full = self.calls % self.interval == 0 or self._cached is None or kwargs
        self.calls += 1
        if full:
            self.full_calls += 1
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
        return SimpleNamespace(sample=self._shallow(sample, timestep, encoder_hidden_states))

    def _embedding(self, sample, timestep, encoder_hidden_states):
        u = self.unet
        emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
        aug = u.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs={})
        if aug is not None:
            emb = emb + aug
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        return emb

    def _shallow(self, sample, timestep, encoder_hidden_states):
        u = self.unet
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        emb = self._embedding(sample, timestep, encoder_hidden_states)
        h = u.conv_in(sample)
        res = [h]
        first = u.down_blocks[0]
        attentions = getattr(first, "attentions", None) or [None] * len(first.resnets)
        for resnet, attn in zip(first.resnets, attentions):
            h = resnet(h, emb)
            if attn is not None:
                h = attn(h, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            res.append(h)
        last = u.up_blocks[-1]
        res = tuple(res[-len(last.resnets):])
        if getattr(last, "has_cross_attention", False):
            h = last(hidden_states=self._cached, temb=emb, res_hidden_states_tuple=res,
                     encoder_hidden_states=encoder_hidden_states)
        else:
            h = last(hidden_states=self._cached, temb=emb, res_hidden_states_tuple=res)
        if u.conv_norm_out is not None:
            h = u.conv_act(u.conv_norm_out(h))
        return u.conv_out(h)
