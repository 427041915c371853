"""`sdlab grid`: an X/Y/Z plot (AUTOMATIC1111's script) over any generation settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..config import GenerationConfig
from .generate import BATCH_SETTINGS, SAMPLING_SETTINGS, sampling_options

EXAMPLES = """examples:
  sdlab grid --x steps=10,20,30 --y cfg-scale=1,4,7.5 "a large red circle on a blue background" --seed 1
  sdlab grid --x "steps=10-30 (+10)" --y sampler="Euler a,DPM++ 2M Karras" --z cfg-scale=1,7.5 "a red star"
  sdlab grid --x prompt-sr=red,green,blue "a red circle on a white background" --vary-seeds
  sdlab grid --x lora-scale=0,0.5,1 --lora my_lora.safetensors "a red sks"
  sdlab grid --image in.png --x strength=0.3,0.6,0.9 "a small yellow star"
axes: any generation option by its name (steps, cfg-scale, sampler, schedule, seed, width, height, ...),
  prompt-sr (the first value is searched in the prompt, each value replaces it) and lora-scale;
  numbers take ranges: 10-30 (every integer), 10-30 (+5) (a step), 10-30 [3] (a count)
"""


# this module's commands and their lines in `sdlab --help`
HELP = {"grid": "X/Y/Z plot: one image per combination of settings, in a labelled grid"}


def register(sub) -> None:
    from ..sampling.xyz_axes import axis_names

    p = sub.add_parser("grid", help=HELP["grid"],
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="what to draw")
    names = ", ".join(axis_names())
    p.add_argument("--x", required=True, metavar="AXIS=VALUES", help=f"the columns; AXIS is one of: {names}")
    p.add_argument("--y", default=None, metavar="AXIS=VALUES", help="the rows")
    p.add_argument("--z", default=None, metavar="AXIS=VALUES", help="one grid per value, side by side")
    p.add_argument("--vary-seeds", action="store_true", help="cell k uses seed + k (default: every cell the same seed)")
    p.add_argument("--image", default=None, help="img2img from this image (for a strength axis)")
    sampling_options(p)
    _other_settings(p)
    p.add_argument("--out", default="outputs", help="output folder (default ./outputs)")
    p.set_defaults(run=run_grid)


def _other_settings(p: argparse.ArgumentParser) -> None:
    """The declared generation settings sampling_options leaves out (strength, newer ones), batch ones aside."""
    from ..config import settings_of
    from .options import add_config_arguments

    have = {a.dest for a in p._actions}
    names = [n for n, (_, _, s) in settings_of(GenerationConfig).items()
             if s.option(n) and n not in (*SAMPLING_SETTINGS, *BATCH_SETTINGS) and n not in have]
    add_config_arguments(p, GenerationConfig, names)


def run_grid(args) -> int:
    from ..io.grids import save_grid
    from ..io.images import load_image
    from ..io.outputs import output_folder
    from ..sampling.xyz_grid import as_axis, cell_steps, plan_cells, xyz_grid
    from .generate import config_from_args, guidance_from_args, load_pipeline, lora_spec

    config = config_from_args(args)
    axes = {k: as_axis(getattr(args, k)) for k in "xyz" if getattr(args, k)}
    loras = [lora_spec(s)[0] for s in args.lora] if any(a.name == "lora-scale" for a in axes.values()) else []
    init = load_image(args.image, what="init image") if args.image else None
    cells = plan_cells(config, axes, vary_seeds=args.vary_seeds, img2img=init is not None, has_loras=bool(loras))
    guidance = guidance_from_args(args)
    output_folder(args.out)                 # after the checks above: a refused grid leaves no folder
    if loras:
        args.lora = []                      # applied per cell at the axis' scale instead
    pipe = load_pipeline(args)
    total = sum(cell_steps(c.config, init is not None) for c in cells)
    with tqdm(total=total, desc=f"grid of {len(cells)}", unit="step", file=sys.stderr) as bar:
        result = xyz_grid(pipe, config, *(axes.get(k) for k in "xyz"), vary_seeds=args.vary_seeds, init_image=init,
                          loras=loras, guidance=guidance, callback=lambda e: bar.update(1))
    for path in save_grid(result, Path(args.out)):
        print(path)
    return 0
