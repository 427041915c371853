"""Sampling: noise schedules, the UNet-as-denoiser wrapper, samplers as functions, img2img start."""

from .denoiser import Denoiser
from .img2img import img2img_sigmas, img2img_start
from .noise import batch_noise, randn_like
from .restart import sample_restart
from .samplers import (
    SAMPLERS,
    SamplerSpec,
    get_sampler,
    resolve_sampler,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lcm,
    sample_lms,
    sampler_names,
)
from .schedule import NoiseSchedule, discrete_sigmas
from .sde import sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_dpmpp_sde
from .sigmas import (SIGMA_KINDS, ays_sigmas, exponential_sigmas, get_sigmas, karras_sigmas, polyexponential_sigmas,
                     schedule_kind, schedule_names)
from .unipc import sample_unipc

__all__ = [
    "Denoiser", "NoiseSchedule", "batch_noise", "SAMPLERS", "SIGMA_KINDS", "SamplerSpec", "ays_sigmas",
    "discrete_sigmas", "exponential_sigmas", "get_sampler", "get_sigmas", "img2img_sigmas", "img2img_start",
    "karras_sigmas", "polyexponential_sigmas", "randn_like", "resolve_sampler", "sample", "sample_ddim",
    "sample_ddpm", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_dpmpp_sde",
    "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_lcm", "sample_lms", "sample_restart",
    "sample_unipc", "sampler_names", "schedule_kind", "schedule_names",
]
