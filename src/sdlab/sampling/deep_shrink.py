"""Deep Shrink (kohya-ss's "Kohya Hires.fix", ComfyUI's PatchModelAddDownscale).

Past the size a UNet was trained at, its deep layers see more latent pixels than they learned to
compose, and the subject comes out twice (SD 1.5 far above 512 pixels, the shipped model above 64).
While the latents are larger than the UNet's `sample_size`, the features leaving its first down
block (and the skip connection taken there) are downscaled by `factor`, and the output of the
up block that matches it is scaled back to the full size: the deep layers compose at the size
they know, the outermost ones draw at the new size.
"""

from __future__ import annotations

import contextlib

import torch.nn.functional as F

from ..errors import ConfigError


def check_factor(factor: float) -> None:
    if not (factor == 0 or 1 <= factor <= 4):
        raise ConfigError(f"deep_shrink must be 0 (off) or a factor from 1 to 4 (2: the deep layers see a twice "
                          f"as large image at the size the model was trained at); got {factor:g}")


def check_controls(factor: float, controls) -> None:
    """ControlNet residuals join the UNet at the full size, so Deep Shrink refuses controls."""
    if factor > 1 and controls:
        raise ConfigError("deep_shrink cannot be combined with ControlNet controls (their residuals join the "
                          "UNet at the full size); leave deep_shrink at 0 or drop the controls")


def shrunk_side(side: int, factor: float, multiple: int) -> int:
    """`side` / `factor`, rounded to the `multiple` the deeper down blocks can halve and double back."""
    return max(multiple, round(side / factor / multiple) * multiple)


def _trained_size(unet) -> tuple[int, int]:
    size = unet.config.sample_size
    return (size, size) if isinstance(size, int) else tuple(size)


@contextlib.contextmanager
def deep_shrink(unet, factor: float):
    """Deep Shrink on a diffusers `UNet2DConditionModel` (or a wrapper that exposes its blocks) for the
    block's duration; factor 0 or 1 leaves the UNet as it is."""
    check_factor(factor)
    if factor <= 1:
        yield
        return
    down, up = unet.down_blocks, unet.up_blocks
    if len(down) < 2 or len(up) != len(down):
        raise ConfigError("deep shrink needs a UNet with at least two down blocks and as many up blocks "
                          "(diffusers' UNet2DConditionModel layout)")
    multiple = 2 ** sum(1 for block in down[1:] if getattr(block, "downsamplers", None))
    trained = _trained_size(unet)
    state = {"full": None}

    def before_unet(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        size = tuple(sample.shape[-2:])
        state["full"] = size if any(s > t for s, t in zip(size, trained)) else None

    def after_first_down(module, args, out):
        if state["full"] is None:
            return out
        hidden, skips = out
        size = tuple(shrunk_side(s, factor, multiple) for s in hidden.shape[-2:])
        small = F.interpolate(hidden, size=size, mode="bicubic", align_corners=False)
        return small, (*skips[:-1], small)

    def after_matching_up(module, args, out):
        if state["full"] is None:
            return out
        return F.interpolate(out, size=state["full"], mode="bicubic", align_corners=False)

    handles = [unet.register_forward_pre_hook(before_unet, with_kwargs=True),
               down[0].register_forward_hook(after_first_down),
               up[-2].register_forward_hook(after_matching_up)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
