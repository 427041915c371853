"""Hires fix read by the oracle (issue 21's acceptance): a 128x128 hires result, downscaled to the
world's 64x64, reads as well as the 64x64 base image (oracle all-right within 0.05).

    python benchmarks/hires_eval.py --n 32 [--upscalers latent lanczos] [--strengths 0.5 0.7]
        [--deep-shrink 0 2] [--hires-sampler Euler] [--direct] [--results]

`--deep-shrink F ...` runs every hires setting with each Deep Shrink factor (sdlab.sampling.deep_shrink;
0: off); `--direct` adds rows generated at the hires size in one pass.

Prompts are the world's seen prompt set (sdlab.world.prompt_sets, as `sdlab world eval-model`
uses), scene i with seed 30000 + i for both the base and every hires variant, so a variant's first
pass is the base image itself. Each variant goes through Pipeline.generate (the public path).
Printed as a Markdown table; `--record` also writes it to benchmarks/RESULTS.md; `--results`
writes the JSON report to benchmarks/results/hires_eval.json (`--out FILE` elsewhere).
"""

from __future__ import annotations

import argparse
import time

from PIL import Image

from report import publish, result_file
from sdlab.config import GenerationConfig
from sdlab.evaluate import emit_report
from sdlab.pipeline import Pipeline
from sdlab.sampling.hires import hires_size
from sdlab.world import spec
from sdlab.world.captions import full_caption
from sdlab.world.metrics import accuracy
from sdlab.world.prompt_sets import SCORED, prompt_set

TARGET = 0.05        # issue 21: hires all-right within 0.05 of the base's
SHOWN = ("background", "color", "shape", "size", "position")


def downscaled(image: Image.Image) -> Image.Image:
    """The image at the world's size, as the oracle reads it (Lanczos)."""
    side = spec.IMAGE_SIZE
    return image if image.size == (side, side) else image.resize((side, side), Image.Resampling.LANCZOS)


def run_variant(pipe, scenes, args, size: int = spec.IMAGE_SIZE, **hires) -> dict:
    """Oracle accuracy of one setting over the scenes (images of `size`, downscaled to the world's)."""
    start, images = time.time(), []
    for i, scene in enumerate(scenes):
        config = GenerationConfig(full_caption(scene), steps=args.steps, cfg_scale=args.cfg_scale,
                                  sampler=args.sampler, seed=30_000 + i, width=size, height=size, **hires)
        images.append(downscaled(pipe.generate(config).images[0]))
    acc = accuracy(scenes, images, attributes=SCORED)
    acc["seconds_per_image"] = (time.time() - start) / len(scenes)
    return {k: round(v, 4) for k, v in acc.items()}


def evaluate(pipe, args) -> dict:
    args.cfg_scale = pipe.cfg_scale_for(args.cfg_scale)     # unset: the model's recommended scale
    scenes = prompt_set("seen", args.n)
    rows = {"base 64x64": run_variant(pipe, scenes, args)}
    side, _ = hires_size(GenerationConfig("", hires_scale=args.scale), spec.IMAGE_SIZE, spec.IMAGE_SIZE)
    for shrink in args.deep_shrink:
        label = f", deep shrink {shrink:g}" if shrink else ""
        if args.direct:
            rows[f"direct {side}x{side}{label}"] = run_variant(pipe, scenes, args, deep_shrink=shrink, size=side)
        for upscaler in args.upscalers:
            for strength in args.strengths:
                rows[f"hires x{args.scale:g} {upscaler} {strength:g}{label}"] = run_variant(
                    pipe, scenes, args, hires_scale=args.scale, hires_upscaler=upscaler, hires_strength=strength,
                    hires_steps=args.hires_steps, hires_sampler=args.hires_sampler, deep_shrink=shrink)
    base = rows["base 64x64"]["all"]
    for row in rows.values():
        row["delta_all"] = round(row["all"] - base, 4)
        row["within_target"] = row["all"] >= base - TARGET
    return {"n": args.n, "steps": args.steps, "hires_steps": args.hires_steps or args.steps,
            "hires_sampler": args.hires_sampler or args.sampler,
            "deep_shrink": args.deep_shrink, "cfg_scale": args.cfg_scale, "sampler": args.sampler, "target": TARGET,
            "rows": rows}


def table(report: dict) -> str:
    head = "| setting | all-right | Δ vs base | " + " | ".join(SHOWN) + " | s/image | within 0.05 |"
    lines = [head, "|" + "---|" * (len(SHOWN) + 5)]
    for name, r in report["rows"].items():
        cells = [f"{r['all']:.3f}", f"{r['delta_all']:+.3f}", *(f"{r.get(k, 0):.3f}" for k in SHOWN),
                 f"{r['seconds_per_image']:.2f}", "yes" if r["within_target"] else "**no**"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/hires_eval.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--n", type=int, default=32, help="seen prompts (default 32)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--hires-steps", type=int, default=0, help="second-pass steps (default 0: --steps)")
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the model's recommended scale")
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--hires-sampler", default=None, help="the second pass's sampler (default: --sampler)")
    p.add_argument("--scale", type=float, default=2.0, help="hires upscale (default 2: 128x128)")
    p.add_argument("--upscalers", nargs="+", default=["latent", "lanczos"])
    p.add_argument("--strengths", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--deep-shrink", type=float, nargs="+", default=[0.0],
                   help="Deep Shrink factors to run each setting with (default 0: off)")
    p.add_argument("--direct", action="store_true", help="also generate at the hires size in one pass")
    p.add_argument("--record", action="store_true", help="write the table to benchmarks/RESULTS.md")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="write the JSON report here")
    out.add_argument("--results", action="store_true",
                     help="write the JSON report to benchmarks/results/hires_eval.json")
    args = p.parse_args(argv)
    pipe = Pipeline.load(args.model)
    report = evaluate(pipe, args)
    passes = f"{args.sampler}, second pass {args.hires_sampler}" if args.hires_sampler else args.sampler
    title = f"Hires fix, oracle all-right of downscaled results vs the base ({pipe.c.name}, n={args.n}, {passes})"
    publish(__file__, title, table(report), argv=argv, record=args.record)
    emit_report(report, result_file(__file__) if args.results else args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
