"""Guidance as wrappers around one denoiser interface: classifier-free guidance, ..."""

from ..lazy import lazy_exports

__all__ = ["CFGDenoiser", "DEFAULT_GUIDANCE_SCALES", "GuidanceCond", "guidance", "rescale_guidance"]
__getattr__, __dir__ = lazy_exports(__name__, {".cfg": ("CFGDenoiser", "GuidanceCond", "rescale_guidance"),
                                               ".presets": ("DEFAULT_GUIDANCE_SCALES", "guidance")})
