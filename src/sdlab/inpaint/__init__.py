"""Inpainting and outpainting (AUTOMATIC1111's img2img with a mask) through the one sampling loop.

    from sdlab import Pipeline, GenerationConfig
    from sdlab.inpaint import INPAINT_STRENGTH, InpaintConfig
    pipe = Pipeline.load()
    out = pipe.inpaint(GenerationConfig("a red star on the left on a blue background", seed=1,
                                        strength=INPAINT_STRENGTH),    # the CLI's default; img2img's is 0.75
                       image, mask, InpaintConfig(mask_blur=2))      # white in `mask` = repaint
    wide = pipe.outpaint(GenerationConfig("a red circle on a blue background"), image, "left=16,top=8")
"""

from ..lazy import lazy_exports

__all__ = ["INPAINT_STRENGTH", "MASKED_CONTENT", "Expand", "InpaintConfig", "Prepared", "composite", "expand_canvas", "inpaint",
           "inpaint_latents", "load_mask", "mask_from_image", "outpaint", "prepare", "processing_size"]
__getattr__, __dir__ = lazy_exports(__name__, {
    ".masks": ("expand_canvas", "load_mask", "mask_from_image"),
    ".options": ("INPAINT_STRENGTH", "MASKED_CONTENT", "Expand", "InpaintConfig"),          # torch-free: `sdlab inpaint --help`
    ".run": ("Prepared", "composite", "inpaint", "inpaint_latents", "outpaint", "prepare", "processing_size")})
