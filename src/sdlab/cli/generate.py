"""`sdlab generate` (txt2img) and `sdlab img2img`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..callbacks import combine
from ..config import GenerationConfig
from ..sampling import sampler_names

EXAMPLES = """examples:
  sdlab generate "a large red circle on the left on a blue background"
  sdlab generate "a small white star at the top on a black background" --sampler "DPM++ 2M Karras" --steps 20
  sdlab generate "a green square" --negative-prompt "black background" --seed 7 --batch-size 4 --batch-count 2
  sdlab generate "a large red circle on a blue background" --seed 1 --trajectory steps.gif
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
    p.add_argument("--trajectory", default=None, metavar="FILE",
                   help="also write the per-step x_t and predicted x0: .gif or .mp4 (one frame per step; "
                        "with several images, each frame is a grid with a row per image) or .png (a strip "
                        "with an x_t and an x0 row per image); .mp4 needs pip install 'sdlab[video]'")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second of --trajectory animations (default 4)")


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

    recorder = _trajectory_recorder(args)
    pipe = Pipeline.load(args.model, dtype=args.dtype, device=args.device)
    steps_per_batch = config.steps if init_image is None else max(int(config.steps * config.strength), 0)
    with tqdm(total=steps_per_batch * config.batch_count, desc="sampling", unit="step", file=sys.stderr) as bar:
        callback = combine([lambda e: bar.update(1), recorder and recorder.bind(pipe)])
        result = pipe.generate(config, init_image=init_image, callback=callback)
    paths = save_result(result, Path(args.out), grid=not args.no_grid)
    if recorder is not None:
        paths.append(recorder.save(args.trajectory, fps=args.fps))
    for path in paths:
        print(path)
    return 0


def _trajectory_recorder(args):
    """A TrajectoryRecorder when --trajectory is given; bad file types fail before sampling."""
    if not getattr(args, "trajectory", None):
        return None
    from ..io.animation import check_fps
    from ..io.trajectory import TrajectoryRecorder, check_trajectory_path

    check_trajectory_path(args.trajectory)
    check_fps(args.fps)
    return TrajectoryRecorder(None)


def run_generate(args) -> int:
    return _run(args, _config(args))


def run_img2img(args) -> int:
    from ..io.images import load_image

    config = _config(args, strength=args.strength)
    return _run(args, config, init_image=load_image(args.image))
