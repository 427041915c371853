"""The one attention hook: a ControlledAttnProcessor on every attention layer of a UNet, and a
forward pre-hook that tells the controller each call's timestep (sdlab.attention)."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from ..errors import ConfigError
from .controller import AttentionController
from .processor import ControlledAttnProcessor

_SUFFIX = ".processor"


def _pre_hook(controller: AttentionController):
    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        controller.begin_forward(sample, timestep)

    return hook


@contextlib.contextmanager
def attention_control(unet, controller: Optional[AttentionController] = None) -> Iterator:
    """Install `ControlledAttnProcessor(controller)` on every attention layer of `unet` (via
    `set_attn_processor`) plus a forward pre-hook that tells the controller each call's timestep;
    on exit the original processors come back and the hook is removed. Yields the controller."""
    if controller is not None and not isinstance(controller, AttentionController):
        raise ConfigError(f"attention controller must be an AttentionController, got {type(controller).__name__}")
    original = dict(unet.attn_processors)
    if not original:
        raise ConfigError(f"{type(unet).__name__} has no attention layers to control")
    layers = {key: ControlledAttnProcessor(controller, key[: -len(_SUFFIX)] if key.endswith(_SUFFIX) else key)
              for key in original}
    handle = None
    try:
        unet.set_attn_processor(layers)
        if controller is not None:
            controller.begin_loop()
            handle = unet.register_forward_pre_hook(_pre_hook(controller), with_kwargs=True)
        yield controller
    finally:
        if handle is not None:
            handle.remove()
        unet.set_attn_processor(dict(original))
        if controller is not None:
            controller.end_loop()
