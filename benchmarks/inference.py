"""Inference speed: plain diffusers StableDiffusionPipeline vs sdlab, same model, sampler
(Euler), steps, size and seed, measured in one process. Prints a Markdown table and, with
--results, appends it to benchmarks/RESULTS.md with the date, hardware and command.

    python benchmarks/inference.py                     # shipped model, CPU, batch 1 and 4
    python benchmarks/inference.py --batch 1 8 --steps 30 50 --device cuda --dtype fp16
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from sdlab import GenerationConfig, Pipeline

PROMPT = "a photo of a large red circle on the left on a blue background"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def time_diffusers(pipe: Pipeline, steps: int, batch: int, repeats: int) -> list[float]:
    ref = pipe.c.to_pipeline()
    ref.set_progress_bar_config(disable=True)
    out = []
    for r in range(repeats + 1):  # the first run warms up
        gen = torch.Generator("cpu").manual_seed(r)
        _sync(pipe.device)
        t = time.perf_counter()
        ref(PROMPT, num_inference_steps=steps, guidance_scale=7.5, num_images_per_prompt=batch, generator=gen)
        _sync(pipe.device)
        out.append(time.perf_counter() - t)
    return out


def time_sdlab(pipe: Pipeline, steps: int, batch: int, repeats: int) -> list[float]:
    out = []
    for r in range(repeats + 1):
        config = GenerationConfig(PROMPT, steps=steps, cfg_scale=7.5, sampler="Euler", seed=r, batch_size=batch)
        _sync(pipe.device)
        t = time.perf_counter()
        pipe.generate(config)
        _sync(pipe.device)
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--steps", type=int, nargs="+", default=[25])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--results", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.load(args.model, device=args.device, dtype=args.dtype)
    rows = ["| steps | batch | diffusers s/image | sdlab s/image | diffusers UNet it/s | sdlab UNet it/s | "
            "sdlab/diffusers time | first call diffusers / sdlab (s) |", "|---" * 8 + "|"]
    for steps in args.steps:
        for batch in args.batch:
            d = time_diffusers(pipe, steps, batch, args.repeats)
            s = time_sdlab(pipe, steps, batch, args.repeats)
            dm, sm = sorted(d[1:])[len(d[1:]) // 2], sorted(s[1:])[len(s[1:]) // 2]  # medians
            rows.append(f"| {steps} | {batch} | {dm / batch:.3f} | {sm / batch:.3f} | {steps / dm:.1f} | "
                        f"{steps / sm:.1f} | {sm / dm:.3f} | {d[0]:.2f} / {s[0]:.2f} |")
    hw = (torch.cuda.get_device_name() if pipe.device.type == "cuda"
          else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    head = (f"### {datetime.date.today()} · {hw} · {pipe.c.name} · {str(pipe.c.dtype).replace('torch.', '')}\n\n"
            f"`python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    table = "\n".join(rows) + f"\n\npeak memory: {_peak_mib(pipe.device):.0f} MiB " + \
        ("(GPU allocated)" if pipe.device.type == "cuda" else "(process RSS)") + "\n"
    print(head + "\n" + table)
    if args.results:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write("\n" + head + "\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
