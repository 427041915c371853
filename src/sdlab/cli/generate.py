"""`sdlab generate` (txt2img) and `sdlab img2img`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..callbacks import combine
from ..config import HIRES_FIELDS, GenerationConfig
from ..errors import ConfigError
from ..guidance import DEFAULT_GUIDANCE_SCALES
from .control import control_options, controls_from_args
from .options import add_config_arguments

EXAMPLES = """examples:
  sdlab generate "a large red circle on the left on a blue background"
  sdlab generate "a small white star at the top on a black background" --sampler "DPM++ 2M Karras" --steps 20
  sdlab generate "a green square" --negative-prompt "black background" --seed 7 --batch-size 4 --batch-count 2
  sdlab generate "a large red circle on a blue background" --seed 1 --trajectory steps.gif
  sdlab generate "a red sks" --lora runs/lora/lora_kohya.safetensors:0.8 --seed 1
  sdlab generate "a red sks <lora:my-heart:0.8>" --lora-dir my_loras --seed 1
  sdlab generate "a red <my-shape>" --embedding runs/ti/learned_embeds.safetensors --seed 1
  sdlab generate "a red object on a white background" --control scene.png:mask:0.9 --controlnet runs/cn/controlnet
  sdlab generate "a large [red:blue:0.5] circle on a white background" --clip-skip 2
  sdlab generate "a large red circle on a blue background" --hires-scale 2 --hires-strength 0.5
"""


# GenerationConfig fields that are options of every sampling command; the batch ones are not
SAMPLING_SETTINGS = ("negative_prompt", "steps", "cfg_scale", "sampler", "schedule", "seed", "width", "height",
                     "guidance_rescale", "deep_shrink")
BATCH_SETTINGS = ("batch_size", "batch_count")


def sampling_options(p: argparse.ArgumentParser) -> None:
    """Options of one sampling run (no prompt, batch or output): shared with mix / interpolate."""
    add_config_arguments(p, GenerationConfig, SAMPLING_SETTINGS)
    p.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt file, or a shipped model: "
                   "shapes-sd (the default) or shapes-sd-lcm (sample it with --sampler LCM --steps 4)")
    p.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")
    learned_options(p)
    f = p.add_argument_group("speed and memory (sdlab.models.speed)")
    f.add_argument("--fast", action="store_true", help="channels_last + fused QKV projections")
    f.add_argument("--compile", default="off", help="torch.compile the UNet: off, default, reduce-overhead "
                   "(CUDA graphs), max-autotune")
    f.add_argument("--deep-cache", type=int, default=0, metavar="N",
                   help="reuse deep UNet features, full pass every N calls (approximate; 0 = off)")
    f.add_argument("--low-memory", action="store_true",
                   help="attention + VAE slicing, VAE tiling, and model CPU offload on CUDA (skipped elsewhere)")
    g = p.add_argument_group("loss and classifier guidance (sdlab.guidance)")
    g.add_argument("--color-guidance", default=None, metavar="R,G,B",
                   help="pull the predicted image toward this colour (0..255 each)")
    g.add_argument("--clip-guidance", default=None, metavar="TEXT",
                   help="pull the image toward TEXT with the shipped CLIP pair")
    g.add_argument("--classifier-guidance", default=None, metavar="LABEL",
                   help="push toward a shape with the shipped noise-aware classifier (e.g. triangle)")
    g.add_argument("--guidance-scale", type=float, default=None,
                   help="strength of the guidance above (default: " +
                        ", ".join(f"{v:g} {k}" for k, v in DEFAULT_GUIDANCE_SCALES.items()) + ")")
    g.add_argument("--guidance-every", type=int, default=1, help="apply it every N denoiser calls (default 1)")


def learned_options(p: argparse.ArgumentParser) -> None:
    """--lora, --embedding, --lora-dir and --vae: shared by every command that samples."""
    a = p.add_argument_group("what `sdlab train` learned")
    a.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="apply a LoRA file (diffusers or kohya layout) at SCALE (default 1); repeat to stack")
    a.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="add a textual-inversion embedding (diffusers learned_embeds, A1111 .pt/.safetensors); "
                        "use its token in the prompt; repeat for several")
    a.add_argument("--lora-dir", action="append", default=[], metavar="DIR",
                   help="where prompt tags <lora:NAME:WEIGHT> (A1111 syntax) find NAME.safetensors; repeatable")
    a.add_argument("--vae", default=None, metavar="PATH",
                   help="use this VAE instead of the model's (`sdlab train vae-decoder` output, an AutoencoderKL "
                        "folder, or an A1111-style VAE .safetensors)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what to draw")
    sampling_options(p)
    add_config_arguments(p, GenerationConfig, BATCH_SETTINGS + ("clip_skip",))
    p.add_argument("--out", default="outputs", help="output folder (default ./outputs)")
    p.add_argument("--no-grid", action="store_true", help="do not write a grid image for batches")
    p.add_argument("--trajectory", default=None, metavar="FILE",
                   help="also write the per-step x_t and predicted x0: .gif or .mp4 (one frame per step; "
                        "with several images, each frame is a grid with a row per image) or .png (a strip "
                        "with an x_t and an x0 row per image); .mp4 needs pip install 'sdlab[video]'")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second of --trajectory animations (default 4)")
    control_options(p)


# this module's commands and their lines in `sdlab --help`
HELP = {"generate": "text to image",
        "img2img": "image to image (SDEdit), or a strength sweep"}


def register(sub) -> None:
    p = sub.add_parser("generate", help=HELP["generate"], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    add_config_arguments(p, GenerationConfig, HIRES_FIELDS)
    from .remote import server_options

    server_options(p)
    p.set_defaults(run=run_generate)
    q = sub.add_parser("img2img", help=HELP["img2img"],
                       epilog='examples:\n  sdlab img2img input.png "a small yellow star" --strength 0.6\n'
                              '  sdlab img2img input.png "a small yellow star" --strength 0.2 0.4 0.6 0.8 --seed 1',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("image", help="input image (any format Pillow reads)")
    _common(q)
    add_config_arguments(q, GenerationConfig, ["strength"], strength=dict(
        nargs="+", more="; several values run a sweep with the same seed and also write sweep-NNNNN.png, a labelled "
                        "grid (rows: images, columns: strengths)"))
    q.set_defaults(run=run_img2img)


def config_from_args(args, **extra) -> GenerationConfig:
    """A GenerationConfig from the parsed options of its fields (`extra` overrides or adds fields);
    no --seed: a random one."""
    import random

    fields = {name: getattr(args, name) for name in GenerationConfig.field_names() if hasattr(args, name)}
    fields = {"prompt": "", **fields, **extra}
    if fields.get("seed") is None:
        fields["seed"] = random.randrange(2**31)        # room for seed + i
    return GenerationConfig(**fields)


def load_pipeline(args):
    """The model with --embedding and --lora applied, then the speed options."""
    pipe = load_learned(args)
    pipe.apply_speed(speed_from_args(args))
    return pipe


def load_learned(args):
    """The model with the learned_options() applied (--vae, --embedding, --lora, --lora-dir)."""
    from ..pipeline import Pipeline

    pipe = Pipeline.load(args.model, dtype=args.dtype, device=args.device, vae=args.vae)
    apply_learned(pipe, args.embedding, args.lora)
    pipe.lora_dirs = [Path(d) for d in args.lora_dir]
    return pipe


def apply_learned(pipe, embeddings: list[str], loras: list[str]) -> None:
    """Add embedding files and merge LoRA files ("FILE" or "FILE:SCALE") into `pipe`."""
    for path in embeddings:
        tokens = pipe.load_embedding(path)
        print(f"embedding {path}: token {', '.join(tokens)}", file=sys.stderr)
    for spec in loras:
        pipe.load_lora(*lora_spec(spec))


def lora_spec(spec: str) -> tuple[str, float]:
    """"FILE:SCALE" -> (FILE, SCALE); a bare FILE (or one whose last ':' part is no number) has scale 1."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            if Path(path).is_file() and not Path(spec).exists():
                raise ConfigError(f"--lora {spec}: the scale '{tail}' must be a number, as in {path}:0.8") from None
    return spec, 1.0


def speed_from_args(args):
    from ..models.speed import SpeedOptions

    low = SpeedOptions.low_memory(args.device) if args.low_memory else SpeedOptions()
    if args.low_memory and low.cpu_offload == "none":
        print("sdlab: note: --low-memory without CUDA: attention/VAE slicing and VAE tiling only "
              "(model CPU offload needs a CUDA device)", file=sys.stderr)
    return SpeedOptions(channels_last=args.fast, fuse_qkv=args.fast and not args.low_memory, compile=args.compile,
                        attention_slicing=low.attention_slicing, vae_slicing=low.vae_slicing,
                        vae_tiling=low.vae_tiling, cpu_offload=low.cpu_offload, deep_cache=args.deep_cache)


def _rgb(text: str) -> tuple[float, float, float]:
    from ..errors import ConfigError

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ConfigError(f"--color-guidance must be three numbers R,G,B in 0..255, got {text!r}")
    return values


def guidance_from_args(args) -> list:
    """Guidance wrappers from the --*-guidance options (sdlab.guidance.presets)."""
    from ..guidance import guidance

    return guidance(color=_rgb(args.color_guidance) if args.color_guidance else None, clip=args.clip_guidance,
                    classifier=args.classifier_guidance, scale=args.guidance_scale, every=args.guidance_every)


def run_and_save(args, config: GenerationConfig, init_image=None, cond_fn=None, settings: dict | None = None) -> int:
    """Generate, save the images (and --trajectory), print the paths. `cond_fn(pipe)` may give
    prompt embeddings to use instead of the prompt; `settings` are added to each image's metadata."""
    from ..io.outputs import output_folder, save_result

    recorder = _trajectory_recorder(args)
    guidance = guidance_from_args(args)
    controls = controls_from_args(args)     # bad images, types and counts fail before the folder is made
    from ..sampling.deep_shrink import check_controls

    check_controls(config.deep_shrink, controls)
    output_folder(args.out)                 # after the checks above: a refused run leaves no folder
    pipe = load_pipeline(args)
    cond = cond_fn(pipe) if cond_fn is not None else None
    steps_per_batch = config.steps if init_image is None else max(int(config.steps * config.strength), 0)
    if config.hires_scale > 1:
        steps_per_batch += config.hires_steps or config.steps
    with tqdm(total=steps_per_batch * config.batch_count, desc="sampling", unit="step", file=sys.stderr) as bar:
        callback = combine([lambda e: bar.update(1), recorder and recorder.bind(pipe)])
        result = pipe.generate(config, init_image=init_image, callback=callback, cond=cond, guidance=guidance,
                               controls=controls)
    for s in result.settings:
        s.update(settings or {})
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
    from ..io.outputs import output_file
    from ..io.trajectory import TrajectoryRecorder, check_trajectory_path

    check_fps(args.fps)
    output_file(check_trajectory_path(args.trajectory), "--trajectory")
    return TrajectoryRecorder(None)


def run_generate(args) -> int:
    if args.server:                         # no model here: the settings go to the server, checked there
        from .remote import run_remote

        return run_remote(args, {n: getattr(args, n) for n in GenerationConfig.field_names() if hasattr(args, n)})
    return run_and_save(args, config_from_args(args))


def run_img2img(args) -> int:
    from ..io.images import load_image

    config = config_from_args(args, strength=args.strength[0])
    image = load_image(args.image, what="init image")
    if len(args.strength) == 1:
        return run_and_save(args, config, init_image=image)
    return _run_sweep(args, config, image)


def _run_sweep(args, config: GenerationConfig, image) -> int:
    from ..io.metadata import save_png
    from ..io.outputs import next_index, save_result
    from ..sampling.strength_sweep import check_strengths, strength_sweep

    strengths = check_strengths(args.strength)
    if args.trajectory:
        from ..errors import ConfigError

        raise ConfigError("--trajectory records one run; give a single --strength with it")
    pipe = load_pipeline(args)
    total = sum(int(config.steps * s) for s in strengths)
    with tqdm(total=total, desc="sweep", unit="step", file=sys.stderr) as bar:
        sweep = strength_sweep(pipe, image, config, strengths, callback=lambda e: bar.update(1))
    out = Path(args.out)
    paths = [p for r in sweep.results for p in save_result(r, out, grid=False)]
    first = sweep.results[0]
    paths.append(save_png(out / f"sweep-{next_index(out) - 1:05d}.png", sweep.grid, first.infotexts[0],
                          {**first.settings[0], "strength": strengths}))
    for path in paths:
        print(path)
    return 0
