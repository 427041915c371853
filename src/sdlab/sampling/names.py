"""The sampler, schedule and hires upscaler names without importing torch, for `--help` and
option choices. sdlab.sampling.samplers registers a sampler under each of these names, and
sdlab.sampling.hires an upscaler (tests/test_lazy_imports.py checks that they agree)."""

from __future__ import annotations

from ..io.metadata import SCHEDULE_LABELS

# registered with a Karras variant ("Euler Karras", ...), then those without one
WITH_KARRAS = ("Euler", "Euler a", "Heun", "LMS", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE")
PLAIN = ("DDIM", "UniPC", "DDPM", "LCM", "Restart", "TCD")
HIRES_UPSCALERS = ("latent", "latent-antialiased", "latent-bicubic", "latent-bicubic-antialiased", "latent-nearest",
                   "latent-nearest-exact", "lanczos", "nearest")


def sampler_names() -> list[str]:
    """All sampler names, in registry order."""
    return [n for name in WITH_KARRAS for n in (name, f"{name} Karras")] + list(PLAIN)


def schedule_names() -> list[str]:
    """The schedule types a generation may choose, by A1111's labels ("Automatic" first)."""
    return list(SCHEDULE_LABELS.values())
