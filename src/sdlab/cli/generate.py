"""`sdlab generate` (txt2img) and `sdlab img2img`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..config import GenerationConfig
from ..sampling import sampler_names

EXAMPLES = """examples:
  sdlab generate "a large red circle on the left on a blue background"
  sdlab generate "a small white star at the top on a black background" --sampler "DPM++ 2M Karras" --steps 20
  sdlab generate "a green square" --negative-prompt "black background" --seed 7 --batch-size 4 --batch-count 2
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--negative-prompt", "-n", default="", help="what to steer away from")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    p.add_argument("--cfg-scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--sampler", default="Euler a", help=f"one of: {', '.join(sampler_names())} (default Euler a)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first image (default: random); image i uses seed+i")
    p.add_argument("--batch-size", type=int, default=1, help="images per batch (default 1)")
    p.add_argument("--batch-count", type=int, default=1, help="number of batches (default 1)")
    p.add_argument("--width", type=int, default=None, help="multiple of 8 (default: the model's native size)")
    p.add_argument("--height", type=int, default=None, help="multiple of 8 (default: the model's native size)")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="CFG rescale phi in [0, 1] (Lin et al. 2023)")
    p.add_argument("--model", default=None, help="diffusers folder or .safetensors/.ckpt file (default: the shipped model)")
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    p.add_argument("--out", default="outputs", help="output folder (default ./outputs)")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid image for batches")
    f = p.add_argument_group("speed and memory (sdlab.models.speed)")
    f.add_argument("--fast", action="store_true", help="channels_last + fused QKV projections")
    f.add_argument("--compile", default="off", help="torch.compile the UNet: off, default, reduce-overhead "
                   "(CUDA graphs), max-autotune")
    f.add_argument("--deep-cache", type=int, default=0, metavar="N",
                   help="reuse deep UNet features, full pass every N calls (approximate; 0 = off)")
    f.add_argument("--low-memory", action="store_true",
                   help="attention + VAE slicing, VAE tiling, model CPU offload (CUDA)")
    g = p.add_argument_group("loss and classifier guidance (sdlab.guidance)")
    g.add_argument("--color-guidance", default=None, metavar="R,G,B",
                   help="pull the predicted image toward this colour (0..255 each)")
    g.add_argument("--clip-guidance", default=None, metavar="TEXT",
                   help="pull the image toward TEXT with the shipped CLIP pair")
    g.add_argument("--classifier-guidance", default=None, metavar="LABEL",
                   help="push toward a shape with the shipped noise-aware classifier (e.g. triangle)")
    g.add_argument("--guidance-scale", type=float, default=None,
                   help="strength of the guidance above (default: 3000 colour, 3000 CLIP, 2 classifier)")
    g.add_argument("--guidance-every", type=int, default=1, help="apply it every N denoiser calls (default 1)")


def register(sub) -> None:
    p = sub.add_parser("generate", help="text to image", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.set_defaults(run=run_generate)
    q = sub.add_parser("img2img", help="image to image (SDEdit)",
                       epilog='example:\n  sdlab img2img input.png "a small yellow star" --strength 0.6',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("image", help="input image (any format Pillow reads)")
    _common(q)
    q.add_argument("--strength", type=float, default=0.75, help="how much to change, in [0, 1] (default 0.75)")
    q.set_defaults(run=run_img2img)


def _config(args, **extra) -> GenerationConfig:
    import random

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    return GenerationConfig(prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                            cfg_scale=args.cfg_scale, sampler=args.sampler, seed=seed, batch_size=args.batch_size,
                            batch_count=args.batch_count, width=args.width, height=args.height,
                            guidance_rescale=args.guidance_rescale, **extra)


def _run(args, config: GenerationConfig, init_image=None) -> int:
    from ..io.outputs import save_result
    from ..pipeline import Pipeline

    pipe = Pipeline.load(args.model, dtype=args.dtype, device=args.device, speed=speed_from_args(args))
    guidance = guidance_from_args(args)
    steps_per_batch = config.steps if init_image is None else max(int(config.steps * config.strength), 0)
    with tqdm(total=steps_per_batch * config.batch_count, desc="sampling", unit="step", file=sys.stderr) as bar:
        result = pipe.generate(config, init_image=init_image, callback=lambda e: bar.update(1), guidance=guidance)
    paths = save_result(result, Path(args.out), grid=not args.no_grid)
    for path in paths:
        print(path)
    return 0


def _rgb(text: str) -> tuple[float, float, float]:
    from ..errors import ConfigError

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--color-guidance must be three numbers R,G,B in 0..255, got {text!r}")
    return values


def speed_from_args(args):
    from ..models.speed import SpeedOptions

    low = SpeedOptions.low_memory() if args.low_memory else SpeedOptions()
    return SpeedOptions(channels_last=args.fast, fuse_qkv=args.fast and not args.low_memory, compile=args.compile,
                        attention_slicing=low.attention_slicing, vae_slicing=low.vae_slicing,
                        vae_tiling=low.vae_tiling, cpu_offload=low.cpu_offload, deep_cache=args.deep_cache)


def guidance_from_args(args) -> list:
    """Guidance wrappers from the --*-guidance options (at most one of each kind)."""
    from ..guidance.classifier import classifier_guidance
    from ..guidance.loss import loss_guidance
    from ..guidance.losses import clip_loss, color_loss

    out, every, scale = [], args.guidance_every, args.guidance_scale
    if args.color_guidance:
        out.append(loss_guidance(color_loss(_rgb(args.color_guidance)), 3000.0 if scale is None else scale,
                                 every=every))
    if args.clip_guidance:
        out.append(loss_guidance(clip_loss(args.clip_guidance), 3000.0 if scale is None else scale, every=every))
    if args.classifier_guidance:
        out.append(classifier_guidance(args.classifier_guidance, 2.0 if scale is None else scale, every=every))
    return out


def run_generate(args) -> int:
    return _run(args, _config(args))


def run_img2img(args) -> int:
    from ..io.images import load_image

    config = _config(args, strength=args.strength)
    return _run(args, config, init_image=load_image(args.image))
