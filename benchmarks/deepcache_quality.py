"""Quality and speed of DeepCache-style step caching against the full UNet, on the shipped
model: oracle accuracies on seen prompts, mean absolute pixel difference to the full path
(same seeds), PSNR, and seconds per image. --results records the table in benchmarks/RESULTS.md,
in place of this script's section with the same title.

    python benchmarks/deepcache_quality.py --n 64 --intervals 2 3 4
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from report import cpu_description, publish
from sdlab import GenerationConfig, Pipeline
from sdlab.models.speed import SpeedOptions
from sdlab.world.captions import full_caption
from sdlab.world.prompt_sets import SCORED, prompt_set
from sdlab.world.metrics import accuracy


def generate_all(pipe, scenes, steps, sampler):
    images, start = [], time.perf_counter()
    for i, scene in enumerate(scenes):
        config = GenerationConfig(full_caption(scene), steps=steps, cfg_scale=7.5, sampler=sampler, seed=10_000 + i)
        images += pipe.generate(config).images
    return images, (time.perf_counter() - start) / len(scenes)


def difference(a, b) -> tuple[float, float]:
    """Mean absolute pixel difference (0..255) and PSNR (dB) between two image lists."""
    diffs = [np.abs(np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)) for x, y in zip(a, b)]
    mae = float(np.mean([d.mean() for d in diffs]))
    mse = float(np.mean([(d ** 2).mean() for d in diffs]))
    return mae, (10 * math.log10(255 ** 2 / mse) if mse > 0 else float("inf"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--sampler", default="Euler a")
    ap.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", action="store_true",
                    help="record the table in benchmarks/RESULTS.md (replaces this script's section of the same title)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenes = prompt_set("seen", args.n)
    ref_pipe = Pipeline.load(args.model)
    ref, ref_time = generate_all(ref_pipe, scenes, args.steps, args.sampler)
    rows = ["| UNet | s/image | speed-up | " + " | ".join(SCORED) + " | all | mean abs diff (0-255) | PSNR dB |",
            "|---" * (len(SCORED) + 6) + "|"]

    def row(name, images, seconds, diff):
        acc = accuracy(scenes, images, attributes=SCORED)
        cells = " | ".join(f"{acc[k]:.2f}" for k in (*SCORED, "all"))
        rows.append(f"| {name} | {seconds:.3f} | {ref_time / seconds:.2f}x | {cells} | {diff[0]:.2f} | {diff[1]:.1f} |")

    row("full", ref, ref_time, (0.0, float("inf")))
    for interval in args.intervals:
        pipe = Pipeline.load(args.model, speed=SpeedOptions(deep_cache=interval))
        images, seconds = generate_all(pipe, scenes, args.steps, args.sampler)
        row(f"deep cache, full every {interval}", images, seconds, difference(ref, images))
    hw = cpu_description()
    title = (f"DeepCache quality · {hw} · {ref_pipe.c.name} · {args.n} seen prompts, {args.steps} steps, "
             f"{args.sampler}, CFG 7.5")
    publish(__file__, title, "\n".join(rows), argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
