"""`sdlab edit "SOURCE" "TARGET"`: a prompt-to-prompt edit (Hertz et al. 2022) with one seed.

Writes the source image, the edited image and a side-by-side pair into --out as
`NNNNN-SEED-source.png`, `-target.png` and `-pair.png`, numbered past the folder's outputs.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..attention.options import MODES, EditConfig
from ..config import GenerationConfig
from ..errors import ConfigError
from .generate import config_from_args, learned_options, load_learned
from .options import add_config_arguments

EXAMPLES = """examples:
  sdlab edit "a red circle on a blue background" "a red square on a blue background" --seed 3
  sdlab edit "a red circle" "a large red circle" --mode refine --out edits
  sdlab edit "a red circle on a blue background" --mode reweight --reweight red=3
  sdlab edit "a red circle" "a red star" --blend circle star --cross-replace 0.6 --self-replace 0.3
"""


# this module's commands and their lines in `sdlab --help`
HELP = {"edit": "prompt-to-prompt edit: replace, refine, reweight, local blend"}


def register(sub) -> None:
    p = sub.add_parser("edit", help=HELP["edit"],
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="the source prompt")
    p.add_argument("target", nargs="?", default=None, help="the edited prompt (default: the source, for reweight)")
    add_config_arguments(p, EditConfig, ["mode", "cross_replace", "self_replace"], mode=dict(choices=MODES))
    p.add_argument("--word-cross-replace", nargs="+", default=[], metavar="WORD=FRACTION",
                   help="a target word's own cross-replace fraction, e.g. square=0.2 (the new shape "
                        "then forms its own outline instead of filling the old one's)")
    p.add_argument("--reweight", nargs="+", default=[], metavar="WORD=FACTOR",
                   help="scale the attention of target words, e.g. red=2.0")
    p.add_argument("--blend", nargs="+", default=[], metavar="WORD",
                   help="local blend: edit only where these words attend (words of either prompt)")
    add_config_arguments(p, EditConfig, ["blend_threshold"])
    add_config_arguments(p, GenerationConfig, ["seed", "steps", "cfg_scale", "sampler", "negative_prompt", "clip_skip"],
                         seed=dict(default=0, help="seed shared by source and target"))
    p.add_argument("--model", default=None, help="diffusers folder or single file (default: the shipped model)")
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    p.add_argument("--out", default="edits", help="output folder (default ./edits)")
    learned_options(p)
    p.set_defaults(run=run)


def parse_word_numbers(items: list[str], option: str = "--reweight", metavar: str = "WORD=FACTOR",
                       example: str = "red=2.0") -> dict[str, float]:
    """["red=2", "circle=0.5"] -> {"red": 2.0, "circle": 0.5}, or ConfigError naming `option`."""
    out = {}
    for item in items:
        word, sep, value = item.rpartition("=")
        try:
            out[word] = float(value)
        except ValueError:
            word = ""
        if not sep or not word:
            raise ConfigError(f"{option} takes {metavar}, e.g. {example}; got {item!r}")
    return out


def run(args) -> int:
    from ..attention.edit import edit
    from ..io.atomic import atomic_save
    from ..io.images import make_grid
    from ..io.metadata import save_png
    from ..io.outputs import output_folder, save_numbered

    cfg = EditConfig(mode=args.mode, cross_replace=args.cross_replace, self_replace=args.self_replace,
                     reweight=parse_word_numbers(args.reweight), blend=tuple(args.blend),
                     blend_threshold=args.blend_threshold,
                     word_cross_replace=parse_word_numbers(args.word_cross_replace, "--word-cross-replace",
                                                           "WORD=FRACTION", "square=0.2"))
    config = config_from_args(args, prompt=args.source)
    out = output_folder(args.out)
    pipe = load_learned(args)
    r = edit(pipe, args.source, args.target, config=config, edit=cfg)
    infos = {"source": pipe.infotext(config, r.seed, *r.source_image.size),
             "target": pipe.infotext(replace(config, prompt=r.target_prompt), r.seed, *r.target_image.size)}
    index, source = save_numbered(out, lambda i: f"{i:05d}-{r.seed}-source.png",
                                  lambda p: save_png(p, r.source_image, infos["source"], r.settings))
    stem = out / f"{index:05d}-{r.seed}"
    target = save_png(f"{stem}-target.png", r.target_image, infos["target"], r.settings)
    grid = make_grid([r.source_image, r.target_image], cols=2)
    pair = atomic_save(f"{stem}-pair.png", lambda tmp: grid.save(tmp, format="PNG"), replace=False)
    for path in (source, target, pair):
        print(path)
    return 0
