"""ControlNet (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion
Models") in sdlab's sampling loop: `Control` units (image, ControlNet, weight, start / end, guess
mode), their loading (folders and single files) and preprocessors (none, mask, edges, layout)."""

from .preprocess import PREPROCESSORS, preprocess
from .spec import Control, LoadedControl, active, infotext_fields

__all__ = ["Control", "LoadedControl", "PREPROCESSORS", "active", "infotext_fields", "preprocess"]
