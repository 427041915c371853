"""`sdlab inpaint IMAGE MASK PROMPT` and outpainting with `--expand` (sdlab.inpaint)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..config import GenerationConfig
from ..errors import ConfigError
from ..inpaint import Expand, InpaintConfig
from ..inpaint.options import INPAINT_STRENGTH
from .generate import BATCH_SETTINGS, config_from_args, guidance_from_args, load_pipeline, sampling_options
from .options import add_config_arguments, parsed_values

EXAMPLES = """examples:
  sdlab inpaint scene.png mask.png "a red star to the left of a blue circle on a white background" --seed 1
  sdlab inpaint scene.png mask.png "a green square" --masked-content fill --strength 1 --mask-blur 2
  sdlab inpaint photo.png mask.png "a cat" --only-masked --padding 32 --model sd15-inpainting.safetensors
  sdlab inpaint scene.png "a red circle on a blue background" --expand left=16,top=8

White in MASK marks what to repaint (any size and mode: it is resized to the image and read as grey,
or by its alpha when it has transparency). Pixels outside the blurred mask keep the image's values.
--width/--height set the size the loop runs at (default: the image's own, rounded to a multiple of 8;
with --only-masked the model's native size); the result always has the image's size.
"""


# this module's commands and their lines in `sdlab --help`
HELP = {"inpaint": "repaint the masked part of an image, or outpaint with --expand"}


def register(sub) -> None:
    p = sub.add_parser("inpaint", help=HELP["inpaint"],
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE", help="input image (any format Pillow reads)")
    p.add_argument("mask", metavar="MASK", help="mask image, white = repaint (with --expand: the prompt)")
    p.add_argument("prompt", metavar="PROMPT", nargs="?", help="what to draw")
    p.add_argument("--expand", default=None, metavar="SIDES",
                   help="outpaint: pixels to add per side, e.g. left=16,top=8 (sides: left, top, right, bottom); "
                        "then give IMAGE PROMPT without a mask")
    add_config_arguments(p, InpaintConfig)
    add_config_arguments(p, GenerationConfig, ["strength"], strength=dict(
        default=INPAINT_STRENGTH, help="denoising strength of the masked area, in [0, 1] (A1111's Denoising "
                                       "strength; 1 ignores the pixels under the mask)"))
    p.add_argument("--inpaint-strength", dest="strength", type=float, default=argparse.SUPPRESS,
                   help="the same as --strength")
    sampling_options(p)
    add_config_arguments(p, GenerationConfig, BATCH_SETTINGS + ("clip_skip",))
    p.add_argument("--out", default="outputs", help="output folder (default ./outputs)")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid image for batches")
    p.set_defaults(run=run_inpaint)


def _inputs(args):
    """(image, mask or None, prompt, expand or None) from the positional arguments."""
    from ..inpaint import load_mask
    from ..io.images import load_image

    if args.expand is not None:
        if args.prompt is not None:
            raise ConfigError("with --expand give IMAGE PROMPT only: the mask is the new border")
        return load_image(args.image, what="image"), None, args.mask, Expand.parse(args.expand)
    if args.prompt is None:
        raise ConfigError("give IMAGE MASK PROMPT (or IMAGE PROMPT with --expand left=16,...)")
    return load_image(args.image, what="image"), load_mask(args.mask), args.prompt, None


def run_inpaint(args) -> int:
    from ..io.outputs import output_folder, save_result

    image, mask, prompt, expand = _inputs(args)
    config = config_from_args(args, prompt=prompt)
    options = InpaintConfig(**parsed_values(InpaintConfig, args))
    if mask is not None:
        from ..inpaint.masks import prepare_mask

        prepare_mask(mask, image.size, options.invert_mask)     # a mask that cannot work fails before the model loads
    guidance = guidance_from_args(args)
    output_folder(args.out)                 # after the checks above: a refused run leaves no folder
    pipe = load_pipeline(args)
    total = int(config.steps * config.strength) * config.batch_count
    with tqdm(total=total, desc="inpainting", unit="step", file=sys.stderr) as bar:
        loop = dict(callback=lambda e: bar.update(1), guidance=guidance)
        if expand is not None:
            result = pipe.outpaint(config, image, expand, options, **loop)
        else:
            result = pipe.inpaint(config, image, mask, options, **loop)
    for path in save_result(result, Path(args.out), grid=not args.no_grid):
        print(path)
    return 0
