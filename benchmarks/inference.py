"""Inference speed: plain diffusers StableDiffusionPipeline vs sdlab, same model, sampler
(Euler), steps, size and seed, measured in one process, interleaved. Prints a Markdown table
(s/image, UNet it/s, peak memory, ratio sdlab/diffusers, first-call times, on a GPU the UNet's
achieved FLOP/s as a share of the bf16 peak) and, with --results, records it in
benchmarks/RESULTS.md with the date, hardware and command, in place of this script's section
with the same title (hardware and settings).

    python benchmarks/inference.py                                  # shipped model, CPU, batch 1 and 4
    python benchmarks/inference.py --model random:sd15 --size 512 --device cuda --dtype fp16 \\
        --steps 30 50 --batch 1 8 --fast --compile reduce-overhead
    python benchmarks/inference.py --model random:sd15 --size 512 --device cuda --dtype fp16 \
        --steps 30 --batch 1 --low-memory                           # the low-memory peak
    python benchmarks/inference.py --lcm shapes-sd-lcm              # + LCM rows (1, 2, 4, 8 steps)

With --lcm (a distilled model folder or an LCM-LoRA file, sdlab train lcm), a second table times
sdlab's LCM sampler at --lcm-steps against the same diffusers runs (Euler, CFG 7.5, --steps[0]).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from lcm_eval import lcm_cfg, load_lcm
from report import cpu_description, publish
from sdlab import GenerationConfig, Pipeline
from sdlab.models.speed import COMPILE_MODES, SpeedOptions

PROMPT = "a photo of a large red circle on the left on a blue background"
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS so far (KiB on Linux)


def run_diffusers(ref, steps, batch, size, seed):
    gen = torch.Generator("cpu").manual_seed(seed)
    ref(PROMPT, num_inference_steps=steps, guidance_scale=7.5, num_images_per_prompt=batch, generator=gen,
        height=size, width=size)


def run_sdlab(pipe, steps, batch, size, seed):
    pipe.generate(GenerationConfig(PROMPT, steps=steps, cfg_scale=7.5, sampler="Euler", seed=seed,
                                   batch_size=batch, width=size, height=size))


def timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def unet_flops(pipe: Pipeline, batch: int, size: int) -> int:
    """FLOPs of one CFG UNet call (batch 2 x `batch`), counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = getattr(pipe.c.unet, "_orig_mod", pipe.c.unet)
    lat = size // pipe.vae_scale
    x = torch.randn(2 * batch, unet.config.in_channels, lat, lat, device=pipe.device, dtype=pipe.c.dtype)
    ctx = torch.randn(2 * batch, 77, unet.config.cross_attention_dim, device=pipe.device, dtype=pipe.c.dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, torch.tensor(500, device=pipe.device), encoder_hidden_states=ctx)
    return counter.get_total_flops()


def bf16_peak(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v * 1e12 for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def load_model(spec: str | None, dtype: str | None):
    """A path, None (the shipped model) or random:ARCH (random weights, built in a temp dir)."""
    if spec and spec.startswith("random:"):
        from sdlab.models.random_model import build_random_model

        folder = Path(tempfile.mkdtemp()) / spec.split(":", 1)[1]
        return build_random_model(spec.split(":", 1)[1], folder, dtype=torch.float16 if dtype != "fp32" else torch.float32)
    return spec


def lcm_rows(args, base_model, diffusers_median: dict, size: int) -> str:
    """s/image of sdlab's LCM sampler at each of --lcm-steps, against diffusers' Euler + CFG."""
    from sdlab.models.shipped import model_location

    lcm = model_location(args.lcm)                  # a folder, an LCM-LoRA file or a shipped name (shapes-sd-lcm)
    pipe = load_lcm(lcm if lcm.is_dir() else None, None if lcm.is_dir() else lcm, base_model,
                    device=args.device, dtype=args.dtype)
    cfg = lcm_cfg(pipe)
    rows = ["| LCM steps | batch | sdlab LCM s/image | diffusers Euler s/image (steps) | speed-up |", "|---" * 5 + "|"]
    for batch, (steps, dm) in diffusers_median.items():
        for k in args.lcm_steps:
            run = lambda seed: pipe.generate(GenerationConfig(PROMPT, steps=k, cfg_scale=cfg, sampler="LCM",
                                                              seed=seed, batch_size=batch, width=size, height=size))
            timed(lambda: run(0), pipe.device)                                   # warm-up
            sm = sorted(timed(lambda: run(r + 1), pipe.device) for r in range(args.repeats))[args.repeats // 2]
            rows.append(f"| {k} | {batch} | {sm / batch:.3f} | {dm / batch:.3f} ({steps}) | {dm / sm:.2f}x |")
    return f"LCM: {args.lcm} (CFG {cfg:g})\n\n" + "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="path, or random:sd15 / random:sd21-base (default: shipped)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--size", type=int, default=None, help="image side (default: the model's native size)")
    ap.add_argument("--steps", type=int, nargs="+", default=[25])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--fast", action="store_true", help="sdlab with channels_last + fused QKV")
    ap.add_argument("--low-memory", action="store_true",
                    help="sdlab with attention/VAE slicing, VAE tiling and (CUDA) model CPU offload")
    ap.add_argument("--compile", default="off", choices=COMPILE_MODES, help="torch.compile the sdlab UNet")
    ap.add_argument("--lcm", default=None, help="also time this LCM (model folder or LCM-LoRA file) at --lcm-steps")
    ap.add_argument("--lcm-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--results", action="store_true",
                    help="record the table in benchmarks/RESULTS.md (replaces this script's section of the same title)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, args.dtype)
    ref_pipe = Pipeline.load(model, device=args.device, dtype=args.dtype)
    ref = ref_pipe.c.to_pipeline()
    ref.set_progress_bar_config(disable=True)
    speed = SpeedOptions(channels_last=args.fast, fuse_qkv=args.fast, compile=args.compile)
    if args.low_memory:
        low = SpeedOptions.low_memory()
        speed = replace(low, cpu_offload=low.cpu_offload if ref_pipe.device.type == "cuda" else "none",
                        channels_last=args.fast, fuse_qkv=args.fast, compile=args.compile)
    pipe = Pipeline.load(model, device=args.device, dtype=args.dtype, speed=speed)
    dev, size = pipe.device, args.size or pipe.native_size
    peak = bf16_peak(dev)
    rows = ["| steps | batch | diffusers s/image | sdlab s/image | diffusers UNet it/s | sdlab UNet it/s | "
            "sdlab/diffusers time | peak MiB diffusers / sdlab | first call diffusers / sdlab (s) | "
            "UNet share of bf16 peak |", "|---" * 10 + "|"]
    diffusers_median = {}                              # batch -> s/call at --steps[0], for the LCM rows
    for steps in args.steps:
        for batch in args.batch:
            first_d = timed(lambda: run_diffusers(ref, steps, batch, size, 0), dev)
            first_s = timed(lambda: run_sdlab(pipe, steps, batch, size, 0), dev)
            d, s, mem_d, mem_s = [], [], 0.0, 0.0
            for r in range(args.repeats):              # interleaved, so drift hits both alike
                _reset_peak(dev)
                d.append(timed(lambda: run_diffusers(ref, steps, batch, size, r + 1), dev))
                mem_d = max(mem_d, _peak_mib(dev))
                _reset_peak(dev)
                s.append(timed(lambda: run_sdlab(pipe, steps, batch, size, r + 1), dev))
                mem_s = max(mem_s, _peak_mib(dev))
            dm, sm = sorted(d)[len(d) // 2], sorted(s)[len(s) // 2]  # medians
            diffusers_median.setdefault(batch, (steps, dm))
            share = "n/a"
            if peak:
                share = f"{unet_flops(ref_pipe, batch, size) * steps / sm / peak:.1%} (whole loop)"
            rows.append(f"| {steps} | {batch} | {dm / batch:.3f} | {sm / batch:.3f} | {steps / dm:.2f} | "
                        f"{steps / sm:.2f} | {sm / dm:.3f} | {mem_d:.0f} / {mem_s:.0f} | {first_d:.2f} / {first_s:.2f} "
                        f"| {share} |")
    hw = (torch.cuda.get_device_name() if dev.type == "cuda"
          else cpu_description())
    opts = ", ".join(k for k, v in (("fast", args.fast), ("low memory", args.low_memory),
                                    (f"compile={args.compile}", args.compile != "off")) if v)
    title = (f"{hw} · {pipe.c.name} · {size}x{size} · "
             f"{str(pipe.c.dtype).replace('torch.', '')}{' · sdlab ' + opts if opts else ''}")
    mem_note = "GPU allocated" if dev.type == "cuda" else "process RSS, cumulative: not a per-path number on CPU"
    text = "\n".join(rows) + f"\n\npeak memory: {mem_note}"
    if args.lcm:
        text += "\n\n" + lcm_rows(args, model, diffusers_median, size)
    publish(__file__, title, text, argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
