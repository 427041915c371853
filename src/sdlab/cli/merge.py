"""`sdlab merge A B --alpha 0.3 [--mode weighted|add-difference --c C] --out PATH`: AUTOMATIC1111's
checkpoint merger for models (diffusers folders, single .safetensors files) and LoRA files
(sdlab.models.merge)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sdlab merge model-a model-b --alpha 0.3 --out merged            ((1 - 0.3) A + 0.3 B, a diffusers folder)
  sdlab merge a.safetensors b.safetensors --mode add-difference --c base.safetensors --alpha 1 --out ab.safetensors
  sdlab merge style.safetensors shape.safetensors --alpha 0.5 --out mixed-lora.safetensors    (two LoRA files)
"""

MODE_CHOICES = ("weighted", "add-difference")   # sdlab.models.merge.MODES, declared here so --help imports no torch
HELP = {"merge": "merge two models or two LoRA files (weighted sum or add difference, as A1111's checkpoint merger)"}


def register(sub) -> None:
    p = sub.add_parser("merge", help=HELP["merge"], epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", metavar="A", help="primary model (diffusers folder or .safetensors file) or LoRA file")
    p.add_argument("b", metavar="B", help="secondary model or LoRA file, of A's layout")
    p.add_argument("--alpha", type=float, required=True,
                   help="multiplier from 0 to 1: weighted gives (1 - alpha) A + alpha B, add-difference A + alpha (B - C)")
    p.add_argument("--mode", choices=MODE_CHOICES, default="weighted", help="weighted sum or add difference")
    p.add_argument("--c", default=None, metavar="C", help="tertiary model for --mode add-difference")
    p.add_argument("--out", required=True,
                   help="output: a folder for model folders, a .safetensors file otherwise (must not exist)")
    p.set_defaults(run=run_merge)


def run_merge(args) -> int:
    from ..models.merge import merge

    result = merge(args.a, args.b, args.out, alpha=args.alpha, mode=args.mode, c=args.c)
    print(f"{result.path} ({result.kind}, {result.tensors} tensors merged, {args.mode} alpha {args.alpha:g})")
    return 0
