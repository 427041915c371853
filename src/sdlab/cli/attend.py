"""`sdlab attend "PROMPT" --out DIR`: the image, one cross-attention overlay per token, and a grid,
as `NNNNN-SEED-image.png`, `NNNNN-SEED-tokenPP-WORD.png`, `NNNNN-SEED-grid.png` (numbered past
the folder's outputs).

Maps are averaged over heads, the chosen layers (--layers, --res) and sampling steps
(--step-range), from the conditional half of the CFG batch (sdlab.attention.store). On the
shipped model the up-block maps of the later steps follow the objects most closely (see
benchmarks/p2p_eval.py). Only the first batch is drawn (--batch-count is ignored).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..attention.options import ALL_PLACES
from ..config import GenerationConfig
from .generate import config_from_args, load_pipeline, sampling_options
from .options import add_config_arguments

EXAMPLES = """examples:
  sdlab attend "a large red circle on the left on a blue background" --out attn --seed 3
  sdlab attend "a small yellow star" --out attn --layers up --res 16 --step-range 12 25
"""


# this module's commands and their lines in `sdlab --help`
HELP = {"attend": "cross-attention maps per token, overlaid on the image"}


def register(sub) -> None:
    p = sub.add_parser("attend", help=HELP["attend"], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", help="what to draw")
    sampling_options(p)
    add_config_arguments(p, GenerationConfig, ["batch_size", "clip_skip"])
    p.add_argument("--out", default="attention", help="output folder (default ./attention)")
    p.add_argument("--layers", nargs="+", default=list(ALL_PLACES), choices=ALL_PLACES,
                   help="UNet places to average (default: all)")
    p.add_argument("--res", nargs="+", type=int, default=None,
                   help="feature-map heights to average, e.g. 16 8 (default: all)")
    p.add_argument("--step-range", nargs=2, type=int, default=None, metavar=("START", "END"),
                   help="average only sampling steps START..END-1 (default: all)")
    p.add_argument("--alpha", type=float, default=0.6, help="heatmap opacity in the overlays (default 0.6)")
    p.set_defaults(run=run)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "tok"


def _save(path: Path, image) -> Path:
    from ..io.atomic import atomic_save

    return atomic_save(path, lambda tmp: image.save(tmp, format="PNG"), replace=False)


def run(args) -> int:
    from ..attention.maps import attention_figure, token_labels
    from ..attention.store import attend
    from ..errors import ConfigError

    if not 0 <= args.alpha <= 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {args.alpha}")
    from ..io.outputs import output_folder, save_numbered

    config = config_from_args(args)
    out = output_folder(args.out)
    pipe = load_pipeline(args)
    steps = tuple(args.step_range) if args.step_range else None
    result, maps = attend(pipe, config, places=args.layers, resolutions=args.res, steps=steps)
    tokens = token_labels(pipe.c.tokenizer, config.prompt)
    for i, (image, seed) in enumerate(zip(result.images, result.seeds)):
        overlays, grid = attention_figure(image, maps[i], tokens, alpha=args.alpha)
        index, path = save_numbered(out, lambda n, s=seed: f"{n:05d}-{s}-image.png",
                                    lambda p, im=image: _save(p, im))
        print(path)
        stem = f"{index:05d}-{seed}"
        for tok, ov in zip(tokens, overlays):
            print(_save(out / f"{stem}-token{tok.position:02d}-{_slug(tok.text)}.png", ov))
        print(_save(out / f"{stem}-grid.png", grid))
    return 0
