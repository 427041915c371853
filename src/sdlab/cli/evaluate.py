"""`sdlab eval`: what a personalization run learned, per checkpoint, as a Markdown report
(sdlab.evaluate.run, whose EvalOptions declare the flags)."""

from __future__ import annotations

import argparse

from .options import add_config_arguments, parsed_values

EXAMPLES = """examples:
  sdlab eval --run-dir runs/ti --token "<my-shape>" --concept shape=heart --out runs/ti/eval
  sdlab eval --artifact runs/lora/lora_kohya.safetensors --token "sks shape" --concept shape=heart
  sdlab eval --artifact runs/db/model --token "sks shape" --concept shape=heart --drift
  sdlab eval --run-dir runs/ft --world-prompts --concept fill=striped --vae runs/vae/vae    (a style fine-tune)
  sdlab eval --model sd15/ --run-dir runs/dog --token "sks dog" --concept-text "a dog" --oracle off
      --reference dog_photos/ --encoder clip-vit-b32/ --drift --class-prompt "a dog"    (any model: no oracle)
"""


# this module's commands and their lines in `sdlab --help`
HELP = {"eval": "evaluate a learned concept (oracle rates, CLIP scores, drift) per checkpoint"}


def register(sub) -> None:
    from ..config import settings_of
    from ..evaluate.run import EvalOptions

    p = sub.add_parser("eval", help=HELP["eval"],
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ("run_dir", "artifacts")
    add_config_arguments(p.add_mutually_exclusive_group(required=True), EvalOptions, source)
    add_config_arguments(p, EvalOptions, [name for name in settings_of(EvalOptions) if name not in source])
    p.set_defaults(run=run_eval)


def run_eval(args) -> int:
    from ..evaluate.run import EvalOptions, evaluate_learned

    print(evaluate_learned(EvalOptions(**parsed_values(EvalOptions, args))).report)
    return 0
