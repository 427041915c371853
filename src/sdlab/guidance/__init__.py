"""Guidance as wrappers around one denoiser interface: classifier-free guidance, ..."""

from .cfg import CFGDenoiser, GuidanceCond, rescale_guidance

__all__ = ["CFGDenoiser", "GuidanceCond", "rescale_guidance"]
