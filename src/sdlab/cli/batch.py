"""`sdlab batch`: one image per row of a prompt file, on Ray Data or in-process (sdlab.batch)."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import GenerationConfig
from .options import add_config_arguments, parsed_values

EXAMPLES = """examples:
  sdlab batch prompts.txt --out renders                       # one prompt a line; local Ray
  sdlab batch prompts.jsonl --out renders --workers 2 --batch-size 16
  sdlab batch prompts.csv --out renders --steps 20 --local     # in this process, without Ray
  sdlab batch prompts.parquet --out renders --address ray://head:10001 --device cuda --workers 8
a row may set: prompt, negative_prompt (negative), steps, cfg_scale (cfg), sampler, seed, width, height,
size (WxH), guidance_rescale, lora ("FILE[:SCALE]", several joined by ';'), id (the image's file name,
default the row number); a JSONL row is an object or a prompt string. A row without a seed uses
SEED + its row number. Run the same command again to finish a killed run: only missing rows render.
Exit status 1 when some rows failed (their errors are in OUT/manifest.jsonl).
"""

ROW_DEFAULTS = ("negative_prompt", "steps", "cfg_scale", "sampler", "seed", "width", "height", "guidance_rescale")


# this module's commands and their lines in `sdlab --help`
HELP = {"batch": "render every row of a prompt file (JSONL, CSV, text, Parquet), on Ray"}


def register(sub) -> None:
    from ..batch.run import BatchOptions
    from .generate import learned_options

    p = sub.add_parser("batch", help=HELP["batch"],
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", help="prompt file: .jsonl, .csv, .txt (one prompt a line) or .parquet")
    p.add_argument("--out", required=True, help="output folder: ID.png per row, manifest.jsonl, batch.json")
    g = p.add_argument_group("settings of every row (a row's own fields override them)")
    add_config_arguments(g, GenerationConfig, ROW_DEFAULTS,
                         seed=dict(default=0, more="; a row without a seed uses SEED + its row number"))
    p.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt file, or a shipped model: "
                   "shapes-sd (the default) or shapes-sd-lcm (sample it with --sampler LCM --steps 4)")
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cpu or cuda for every worker (cuda: one GPU each; "
                                                  "default: best available)")
    learned_options(p)
    add_config_arguments(p, BatchOptions)
    p.set_defaults(run=run_batch_command)


def run_batch_command(args) -> int:
    from tqdm import tqdm

    from ..batch import BatchOptions, ModelSpec, run_batch

    base = GenerationConfig("", **{name: getattr(args, name) for name in ROW_DEFAULTS})
    options = BatchOptions(**parsed_values(BatchOptions, args))
    spec = ModelSpec(model=args.model, dtype=args.dtype, device=args.device, vae=args.vae,
                     embeddings=tuple(args.embedding), loras=tuple(args.lora), lora_dirs=tuple(args.lora_dir),
                     base_dir=os.getcwd())
    with tqdm(desc="batch", unit="row", file=sys.stderr) as bar:
        summary = run_batch(args.prompts, args.out, base, spec, options, progress=lambda recs: bar.update(len(recs)))
    for row_id, error in summary.errors[:5]:
        print(f"sdlab batch: row {row_id}: {error}", file=sys.stderr)
    where = "in-process" if summary.engine == "local" else f"on Ray, {options.workers} worker(s)"
    print(f"{summary.ok} rows rendered, {summary.failed} failed, {summary.skipped} done before; "
          f"{summary.rows_per_s:.2f} rows/s {where}; manifest: {os.path.join(args.out, 'manifest.jsonl')}")
    return 1 if summary.failed else 0
