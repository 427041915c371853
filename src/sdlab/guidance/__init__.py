"""Guidance as wrappers around one denoiser interface: classifier-free guidance, ..."""

from .cfg import CFGDenoiser, GuidanceCond, rescale_guidance
from .presets import DEFAULT_GUIDANCE_SCALES, guidance

__all__ = ["CFGDenoiser", "DEFAULT_GUIDANCE_SCALES", "GuidanceCond", "guidance", "rescale_guidance"]
