"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models") in sdlab's sampling loop: `Control` units (image, ControlNet, weight, start / end, guess
mode), their loading (folders and single files) and preprocessors (none, mask, edges, layout)."""

from ..lazy import lazy_exports

__all__ = ["Control", "LoadedControl", "PREPROCESSORS", "active", "infotext_fields"]
__getattr__, __dir__ = lazy_exports(__name__, {".preprocess": ("PREPROCESSORS", "preprocess"),   # torch-free: --help
                                               ".spec": ("Control", "LoadedControl", "active", "infotext_fields")})
