"""Attention: the one hook (a diffusers attention processor), controllers that store cross-attention
maps or edit them (prompt-to-prompt, Hertz et al. 2022), and heatmaps of the maps.

    result, maps = attend(pipe, GenerationConfig("a red circle"))      # maps: (1, h, w, tokens)
    r = edit(pipe, "a red circle", "a red square", seed=3)              # r.source_image, r.target_image
    pipe.generate(config, attention=controller)                        # any AttentionController
"""

import sys
import types

from ..lazy import lazy_exports

__all__ = ["attention_control", "attend", "AttentionController", "AttentionStore", "ControlledAttnProcessor",
           "LayerInfo", "place_of", "edit", "edit_batch", "EditConfig", "EditResult", "LocalBlend",
           "PromptToPromptController"]
__getattr__, __dir__ = lazy_exports(__name__, {
    ".hook": ("attention_control",), ".controller": ("AttentionController",),
    ".processor": ("ControlledAttnProcessor", "LayerInfo", "place_of"), ".store": ("AttentionStore", "attend"),
    ".edit": ("EditResult", "edit_batch"), ".options": ("EditConfig",),
    ".p2p": ("LocalBlend", "PromptToPromptController")})


class _Attention(types.ModuleType):
    """`sdlab.attention.edit` stays the function, as when this package imported everything at once
    (the submodule of the same name is in sys.modules, where `import sdlab.attention.edit` finds it)."""

    @property
    def edit(self):
        from .edit import edit

        return edit

    @edit.setter
    def edit(self, module) -> None:      # where the import system records the submodule: ignored
        pass


sys.modules[__name__].__class__ = _Attention
