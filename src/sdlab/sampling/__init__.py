"""Sampling: noise schedules, the UNet-as-denoiser wrapper, samplers as functions, img2img start."""

from ..lazy import lazy_exports

_EXPORTS = {
    ".denoiser": ("Denoiser",),
    ".img2img": ("img2img_sigmas", "img2img_start"),
    ".noise": ("batch_noise", "randn_like"),
    ".restart": ("sample_restart",),
    ".samplers": ("SAMPLERS", "SamplerSpec", "get_sampler", "resolve_sampler", "sample", "sample_ddim", "sample_ddpm",
                  "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_lcm",
                  "sample_lms", "sample_tcd"),
    ".names": ("sampler_names", "schedule_names"),      # torch-free: option choices, --help
    ".schedule": ("NoiseSchedule", "discrete_sigmas"),
    ".sde": ("sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_dpmpp_sde"),
    ".sigmas": ("SIGMA_KINDS", "ays_sigmas", "exponential_sigmas", "get_sigmas", "karras_sigmas",
                "polyexponential_sigmas", "schedule_kind"),
    ".unipc": ("sample_unipc",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "Denoiser", "NoiseSchedule", "batch_noise", "SAMPLERS", "SIGMA_KINDS", "SamplerSpec", "ays_sigmas",
    "discrete_sigmas", "exponential_sigmas", "get_sampler", "get_sigmas", "img2img_sigmas", "img2img_start",
    "karras_sigmas", "polyexponential_sigmas", "randn_like", "resolve_sampler", "sample", "sample_ddim",
    "sample_ddpm", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_dpmpp_sde",
    "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_lcm", "sample_lms", "sample_restart",
    "sample_tcd", "sample_unipc", "sampler_names", "schedule_kind", "schedule_names",
]
