"""Inpainting and outpainting through the pipeline's one sampling loop, as AUTOMATIC1111 does it.

`prepare` does the pixel work (mask, blur, crop, fill) at the processing size, `inpaint_latents`
runs the loop (img2img start at config.strength; an ordinary UNet with the known region held
to the source, sdlab.sampling.inpaint; an inpainting UNet with its 9-channel input), and
`composite` pastes the result back in pixel space with the blurred mask, so every pixel outside
the blurred mask is the source's, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..config import MAX_SIDE, GenerationConfig
from ..errors import ConfigError
from ..io.images import to_rgb
from ..sampling import Denoiser
from ..sampling.inpaint import ConcatUNet, inpaint_conditioning, inpaint_guidance, is_inpainting_unet, latent_mask
from ..sampling.noise import batch_noise
from . import masks
from .options import Expand, InpaintConfig

Box = masks.Box


@dataclass
class Prepared:
    """One inpainting job at its processing size: the image (filled unless masked content is
    "original") and blurred mask that the loop sees, and what the composite needs."""

    source: Image.Image           # the input image, RGB, its own size
    image: Image.Image            # processing size
    mask: Image.Image             # "L", blurred, processing size
    overlay: Image.Image          # "L", source size: how much of the generated image shows
    region: Optional[Box]         # only masked: the crop of the source that was inpainted

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def _multiple(v: int, m: int) -> int:
    return max(m, int(round(v / m)) * m)


def processing_size(pipe, config: GenerationConfig, image_size: tuple[int, int], only_masked: bool) -> tuple[int, int]:
    """(width, height) the loop runs at: config's, else the model's native size for an
    only-masked crop, else the image's own size rounded to a multiple of the VAE's factor."""
    if only_masked:
        return pipe.size(config)
    w, h = (_multiple(v, pipe.vae_scale) for v in image_size)
    size = (config.width or w, config.height or h)
    if max(size) > MAX_SIDE:
        raise ConfigError(f"the image is {image_size[0]}x{image_size[1]}: inpainting it whole runs at most at "
                          f"{MAX_SIDE} pixels a side; give width and height, or use only_masked")
    return size


def prepare(image: Image.Image, mask: Image.Image, options: InpaintConfig, size: tuple[int, int]) -> Prepared:
    """The pixel side (A1111's StableDiffusionProcessingImg2Img.init with a mask): the mask
    resized to the image, inverted, blurred; "only masked" crops around it (padding, the
    processing aspect ratio); the masked area filled unless masked content is "original"."""
    source = to_rgb(image)
    blurred = masks.blur_mask(masks.prepare_mask(mask, source.size, options.invert_mask), options.mask_blur)
    region = None
    if options.only_masked:
        region = masks.fit_region(masks.crop_region(blurred, options.padding), *size, source.size)
        work, work_mask = source.crop(region), blurred.crop(region)
    else:
        work, work_mask = source, blurred
    if work.size != size:
        work = work.resize(size, Image.Resampling.LANCZOS)
        work_mask = work_mask.resize(size, Image.Resampling.LANCZOS)
    if options.masked_content != "original":
        work = masks.fill(work, work_mask)
    return Prepared(source, work, work_mask, masks.overlay_mask(blurred, region is None), region)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as a (1, 3, H, W) tensor in [-1, 1], as the VAE takes it."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def inpaint_latents(pipe, config: GenerationConfig, prep: Prepared, options: InpaintConfig, seeds: Sequence[int],
                    **loop) -> torch.Tensor:
    """Clean latents of one batch (image i from seeds[i]) through `pipe.sample_latents`: the
    img2img start from the prepared image at config.strength; "latent noise" / "latent nothing"
    replace the masked latents by the seed's noise / zeros (A1111). An ordinary UNet gets the
    known region held to the source (KnownRegionDenoiser, outermost guidance); an inpainting
    UNet its mask and masked-image latents instead, as diffusers' inpainting pipeline (no
    latent blending). `loop`: sample_latents' keywords (callback, cancel, guidance, attention)."""
    width, height = prep.size
    pixels = image_tensor(prep.image).to(pipe.device)
    source = pipe.encode_image(pixels)
    repaint = latent_mask(prep.mask, source.shape[-1], source.shape[-2]).to(source)
    noise = batch_noise(source.shape[1:], [torch.Generator("cpu").manual_seed(s) for s in seeds]).to(source)
    init = source.expand(len(seeds), -1, -1, -1)
    if options.masked_content == "latent noise":
        init = init * (1 - repaint) + noise * repaint
    elif options.masked_content == "latent nothing":
        init = init * (1 - repaint)
    guidance = list(loop.pop("guidance", ()))
    denoiser = None
    if is_inpainting_unet(pipe.c.unet):
        full = torch.from_numpy(np.asarray(prep.mask, dtype=np.float32) / 255.0)[None, None].to(pixels)
        extra = inpaint_conditioning(pipe.encode_image, pixels, full, tuple(source.shape[-2:]))
        denoiser = Denoiser(ConcatUNet(pipe.c.unet, extra), pipe.schedule)
    else:
        guidance.append(inpaint_guidance(source, 1 - repaint, noise))
    return pipe.sample_latents(config, list(seeds), width, height, init=init, noise=noise, guidance=guidance,
                               denoiser=denoiser, **loop)


def composite(prep: Prepared, generated: Image.Image) -> Image.Image:
    """The generated image put back into the source (an only-masked crop pasted at its place)
    and blended by the overlay mask: outside the blurred mask, the source's pixels exactly."""
    full = masks.paste_region(prep.source, generated, prep.region) if prep.region else generated
    return masks.composite(prep.source, full, prep.overlay)


def inpaint(pipe, config: GenerationConfig, image: Image.Image, mask: Image.Image,
            options: InpaintConfig = InpaintConfig(), **loop):
    """Repaint the white area of `mask` in `image` with `config` (prompt, seed, sampler, steps,
    strength = A1111's denoising strength): a GenerationResult with batch_count x batch_size
    images of the source's size; image i uses seed config.seed + i. `loop`: callback, cancel,
    guidance, attention, as Pipeline.generate takes them."""
    from ..pipeline import GenerationResult

    if not isinstance(config, GenerationConfig):
        raise ConfigError(f"config must be a GenerationConfig, got {type(config).__name__}")
    if not isinstance(options, InpaintConfig):
        raise ConfigError(f"options must be an InpaintConfig, got {type(options).__name__}")
    if not isinstance(image, Image.Image):
        raise ConfigError(f"image must be a PIL image, got {type(image).__name__}")
    from ..sampling.hires import check_hires

    check_hires(config, img2img=True)       # as A1111: no hires fix in img2img or inpainting
    size = processing_size(pipe, config, image.size, options.only_masked)
    prep = prepare(image, mask, options, size)
    result = GenerationResult([], [], [], [])
    with pipe.prompt_loras(config.prompt):
        for b in range(config.batch_count):
            seeds = [config.seed + b * config.batch_size + i for i in range(config.batch_size)]
            generated = pipe.decode_images(inpaint_latents(pipe, config, prep, options, seeds, **loop))
            for seed, im in zip(seeds, generated):
                result.images.append(composite(prep, im))
                result.seeds.append(seed)
                result.settings.append({**pipe.settings_for(config, seed, *size, img2img=True), "mode": "inpaint",
                                        "inpaint": options.to_dict()})
                result.infotexts.append(pipe.infotext(config, seed, *size, img2img=True,
                                                      extra=options.infotext_fields()))
    return result


def outpaint(pipe, config: GenerationConfig, image: Image.Image, expand: Expand,
             options: InpaintConfig = InpaintConfig(), **loop):
    """`image` on a canvas grown by `expand` pixels per side, the new border painted (inpaint with
    the border as mask), the original area pasted back unchanged."""
    if not isinstance(expand, Expand):
        raise ConfigError(f"expand must be an Expand, got {type(expand).__name__}")
    source = to_rgb(image)
    canvas, mask = masks.expand_canvas(source, expand)
    result = inpaint(pipe, config, canvas, mask, replace(options, invert_mask=False), **loop)
    for i, im in enumerate(result.images):
        im.paste(source, (expand.left, expand.top))
        result.settings[i].update(mode="outpaint", expand=str(expand))
    return result
