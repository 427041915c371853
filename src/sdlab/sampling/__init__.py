"""Sampling: noise schedules, the UNet-as-denoiser wrapper, samplers as functions, img2img start."""

from .denoiser import Denoiser
from .img2img import img2img_sigmas, img2img_start
from .noise import batch_noise, randn_like
from .samplers import (
    SAMPLERS,
    SamplerSpec,
    get_sampler,
    sample,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
    sampler_names,
)
from .schedule import NoiseSchedule, discrete_sigmas, get_sigmas, karras_sigmas

__all__ = [
    "Denoiser", "NoiseSchedule", "batch_noise", "SAMPLERS", "SamplerSpec", "discrete_sigmas", "get_sampler",
    "get_sigmas", "img2img_sigmas", "img2img_start", "karras_sigmas", "randn_like", "sample",
    "sample_ddim", "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral", "sample_heun",
    "sample_lms", "sampler_names",
]
