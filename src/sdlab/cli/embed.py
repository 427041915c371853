"""`sdlab mix` (token-embedding mixing) and `sdlab interpolate` (prompt interpolation sweeps)."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from ..config import GenerationConfig
from ..errors import ConfigError
from .generate import config_from_args, load_pipeline, run_and_save, sampling_options
from .options import add_config_arguments

MIX_HELP = """Mix the input (token) embeddings of several words and draw the result.

TEMPLATE is a prompt with '{}' where the mixed word goes; '{}' is filled with the first
WORD and that word's token embedding is replaced by sum(w_i * e(word_i)) / sum(w_i) before
the text encoder runs (every occurrence of the word). Without '{}', --word names the word
of the prompt to replace (default: the first WORD)."""

MIX_EXAMPLES = """examples:
  sdlab mix "a large red {} on a blue background" circle=0.5 square=0.5 --seed 1 --out mixes
  sdlab mix "a large red {} on a blue background" circle square --sweep 5 --seed 1 --out mixes
  sdlab mix "a small green circle on the left" square=1 --word circle --out swaps
"""

INTERP_EXAMPLES = """examples:
  sdlab interpolate "a large red circle on a blue background" "a large red square on a blue background" --frames 8 --out sweep.gif
  sdlab interpolate "a small white star" "a large black cross" --frames 12 --method lerp --out sweep.mp4

An animation NAME.gif/.mp4 also gets its frames as one labelled PNG strip beside it: NAME-strip.png.
An existing file is never replaced: the command refuses before sampling.
"""


# this module's commands and their lines in `sdlab --help`
HELP = {"mix": "mix token embeddings of words (e.g. half circle, half square)",
        "interpolate": "interpolate between two prompts' embeddings (same seed), as a video"}


def register(sub) -> None:
    m = sub.add_parser("mix", help=HELP["mix"],
                       description=MIX_HELP, epilog=MIX_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("prompt", metavar="TEMPLATE", help="prompt with '{}' where the mixed word goes")
    m.add_argument("words", nargs="+", metavar="WORD[=WEIGHT]", help="words to mix with their weights (default 1)")
    m.add_argument("--word", default=None, help="word of the prompt to replace (when TEMPLATE has no '{}')")
    m.add_argument("--sweep", type=int, default=None, metavar="N",
                   help="with two words: N (2..64) mixes from the first (w=0) to the second (w=1), one seed, "
                        "written as mix-sweep-NNNNN.png (weights given are ignored)")
    sampling_options(m)
    add_config_arguments(m, GenerationConfig, ["batch_size", "clip_skip"], batch_size=dict(help="images per mix"))
    m.add_argument("--out", default="outputs", help="output folder (default ./outputs)")
    m.add_argument("--no-grid", action="store_true", help="do not write a grid image for batches")
    m.set_defaults(run=run_mix, trajectory=None)

    i = sub.add_parser("interpolate", help=HELP["interpolate"],
                       epilog=INTERP_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("prompt_a")
    i.add_argument("prompt_b")
    i.add_argument("--frames", type=int, default=8, help="number of frames, both prompts included (default 8)")
    i.add_argument("--method", choices=("slerp", "lerp"), default="slerp",
                   help="per-token spherical (default) or linear interpolation of the encoder outputs")
    i.add_argument("--fps", type=float, default=4.0, help="frames per second (default 4)")
    i.add_argument("--out", default="interpolation.gif", help=".gif, .mp4 or .png (default interpolation.gif)")
    sampling_options(i)
    add_config_arguments(i, GenerationConfig, ["clip_skip"])
    i.set_defaults(run=run_interpolate)


MIN_SWEEP, MAX_SWEEP = 2, 64


def parse_weights(items: list[str]) -> dict[str, float]:
    """['circle=0.5', 'square'] -> {'circle': 0.5, 'square': 1.0}."""
    out: dict[str, float] = {}
    for item in items:
        word, sep, value = item.partition("=")
        if not word.strip():
            raise ConfigError(f"'{item}' has no word; write WORD=WEIGHT, e.g. circle=0.5")
        try:
            out[word.strip()] = float(value) if sep else 1.0
        except ValueError:
            raise ConfigError(f"weight of '{word}' must be a number, got '{value}'") from None
    return out


def mix_target(template: str, weights: dict[str, float], word: str | None) -> tuple[str, str]:
    """(prompt, word to replace) from a template with '{}' or a plain prompt and --word."""
    first = next(iter(weights))
    if "{}" in template:
        if word is not None:
            raise ConfigError("give either '{}' in the template or --word, not both")
        return template.replace("{}", first), first
    return template, word or first


def run_mix(args) -> int:
    from ..text.embedding_ops import encode_with_overrides, mix

    weights = parse_weights(args.words)
    prompt, target = mix_target(args.prompt, weights, args.word)
    if args.sweep is not None:
        if not MIN_SWEEP <= args.sweep <= MAX_SWEEP:    # each mix is a full sampling run, all in one image
            raise ConfigError(f"--sweep must be between {MIN_SWEEP} and {MAX_SWEEP} mixes, got {args.sweep}")
        return _mix_sweep(args, prompt, target, list(weights))
    spec = mix(weights)
    config = config_from_args(args, prompt=prompt)
    return run_and_save(args, config, cond_fn=lambda pipe: encode_with_overrides(pipe, prompt, {target: spec},
                                                                                  config.clip_skip),
                        settings={"embedding_mix": {target: weights}})


def _mix_sweep(args, prompt: str, target: str, words: list[str]) -> int:
    from ..io.outputs import output_folder, save_numbered
    from ..io.sweeps import save_sweep, value_labels
    from ..text.embedding_ops import encode_with_overrides, mix

    if len(words) != 2:
        raise ConfigError(f"--sweep needs two words, got {len(words)}")
    config = config_from_args(args, prompt=prompt, batch_size=1)
    out = output_folder(args.out)
    pipe = load_pipeline(args)
    ws = [k / (args.sweep - 1) for k in range(args.sweep)]
    images = []
    with pipe.prompt_loras(prompt):
        for w in tqdm(ws, desc="mix sweep", file=sys.stderr):
            cond = encode_with_overrides(pipe, prompt, {target: mix({words[0]: 1 - w, words[1]: w})},
                                         config.clip_skip)
            images += pipe.sample_images(config, [config.seed], cond=cond)
    labels = value_labels(ws, f"w({words[1]})")
    print(save_numbered(out, lambda i: f"mix-sweep-{i:05d}.png", lambda p: save_sweep(images, labels, p))[1])
    return 0


def run_interpolate(args) -> int:
    from ..io.outputs import output_file
    from ..io.sweeps import check_sweep_path, save_sweep, strip_path, value_labels
    from ..text.interpolation import check_frames, interpolate

    check_frames(args.frames)
    out = output_file(check_sweep_path(args.out))             # before sampling: sdlab replaces no file
    strip = output_file(strip_path(out)) if out.suffix.lower() != ".png" else None
    config = config_from_args(args, prompt=args.prompt_a)
    pipe = load_pipeline(args)
    with tqdm(total=config.steps * -(-args.frames // 8), desc="sampling", unit="step", file=sys.stderr) as bar:
        result = interpolate(pipe, args.prompt_a, args.prompt_b, args.frames, config.seed, method=args.method,
                             config=config, callback=lambda e: bar.update(1))
    labels = value_labels(result.ts, "t")
    print(f"seed {result.seed}, {args.method}, {args.frames} frames", file=sys.stderr)
    print(save_sweep(result.images, labels, out, fps=args.fps))
    if strip is not None:
        print(save_sweep(result.images, labels, strip))
    return 0
