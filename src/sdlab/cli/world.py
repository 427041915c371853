"""`sdlab world ...`: the shapes world (read an image with the oracle, export a dataset,
train and evaluate the shipped model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


# this module's commands and their lines in `sdlab --help`
HELP = {"world": "the shapes world: oracle, dataset, base model"}


def register(sub) -> None:
    p = sub.add_parser("world", help=HELP["world"])
    ws = p.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")

    r = ws.add_parser("read", help="read background and objects from an image, as JSON")
    r.add_argument("image")
    r.add_argument("--no-mask", action="store_true", help="leave out the run-length masks")
    r.set_defaults(run=run_read)

    e = ws.add_parser("export", help="write rendered scenes as an image folder with metadata.jsonl",
                      epilog="examples:\n  sdlab world export hearts --concept heart --n 8   # a reserved shape: "
                             "personalization data\n  sdlab world export striped --fill striped --n 512\n"
                             "  sdlab world export world --n 1000                 # scenes as the base model saw them",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("out", help="a new (or empty) folder")
    e.add_argument("--n", type=int, default=1000, help="number of images (default: %(default)s)")
    e.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    e.add_argument("--concept", default=None, metavar="SHAPE",
                   help="every image shows this shape (e.g. the reserved 'heart'), single objects")
    e.add_argument("--fill", default=None, help="every object has this fill (e.g. the reserved 'striped')")
    e.set_defaults(run=run_export)

    t = ws.add_parser("train-model", help="train the shipped model from scratch (resumable)",
                      epilog="example:\n  sdlab world train-model --run-dir runs/base --unet-minutes 120",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--run-dir", default="runs/base", help="checkpoints; rerun to resume")
    t.add_argument("--out", default="runs/base/model", help="where the diffusers folder is written")
    t.add_argument("--clip-out", default="runs/base/clip-pair", help="where the CLIP pair is written")
    t.add_argument("--vae-minutes", type=float, default=25,
                   help="each stage's --*-minutes: its total budget, counted over resumes")
    t.add_argument("--decoder-minutes", type=float, default=25)
    t.add_argument("--clip-minutes", type=float, default=12)
    t.add_argument("--unet-minutes", type=float, default=120)
    t.add_argument("--cache-size", type=int, default=60000, help="rendered scenes encoded once for the UNet")
    t.add_argument("--unet-lr", type=float, default=6e-4,
                   help="the UNet's peak learning rate after warm-up (the text encoder's is half); the recipe's from "
                        "scratch; an --init-from run that trains on wants about 1e-4")
    t.add_argument("--caption-mismatch", type=float, default=0.0,
                   help="share of UNet samples captioned with another scene's caption, as noisy web captions "
                        "(0 to 0.9; the shipped model: 0): guidance then matters (README, 'The shipped model')")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--card", action="store_true", help="evaluate the result and write MODEL_CARD.md")
    t.add_argument("--init-from", default=None,
                   help="start a new run folder from this model's weights (e.g. the shipped one) and train on; the "
                        "minutes count its own training too (the shipped UNet's 454: --unet-minutes 470 trains 16 "
                        "more; a stage already past its minutes is skipped)")
    t.set_defaults(run=run_train)

    c = ws.add_parser("train-classifier", help="train the noise-aware shape classifier for classifier guidance")
    c.add_argument("--model", default=None, help="model whose VAE and schedule it reads (default: shipped)")
    c.add_argument("--out", default="runs/shapes-classifier")
    c.add_argument("--minutes", type=float, default=10)
    c.add_argument("--n", type=int, default=20000, help="rendered scenes encoded once")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--latent-cache", default=None,
                   help="reuse a train-model run's latents.safetensors instead of encoding scenes")
    c.set_defaults(run=run_train_classifier)

    v = ws.add_parser("eval-model", help="oracle scores of a model on seen and held-out prompts")
    v.add_argument("--model", default=None)
    v.add_argument("--n", type=int, default=64, help="samples per prompt set")
    v.add_argument("--steps", type=int, default=25)
    v.add_argument("--cfg", type=float, nargs="+", default=None,
                   help="guidance scales (default: 7.5, 1 and the model's recommended scale)")
    v.add_argument("--sampler", default="Euler a")
    v.add_argument("--guidance-rescale", type=float, default=0.0,
                   help="CFG rescale phi in [0, 1] (Lin et al. 2023; default 0: plain guidance)")
    v.add_argument("--json-out", default=None)
    v.set_defaults(run=run_eval)


def run_read(args) -> int:
    from ..io.images import load_image
    from ..world import oracle

    image = load_image(args.image)
    print(json.dumps(oracle.read(image).to_dict(with_mask=not args.no_mask)))
    return 0


def run_export(args) -> int:
    from tqdm import tqdm

    from ..world.data import concept_sampler, export_folder

    sampler = concept_sampler(args.concept, args.fill) if args.concept or args.fill else None
    with tqdm(total=args.n, desc="export", unit="img", disable=args.n < 50) as bar:
        out = export_folder(args.out, args.n, args.seed, sampler, progress=lambda i, n: bar.update(1))
    print(out)
    return 0


def run_train(args) -> int:
    from ..recipe.train import train_model

    out = train_model(Path(args.run_dir), Path(args.out), vae_minutes=args.vae_minutes, decoder_minutes=args.decoder_minutes,
                      clip_minutes=args.clip_minutes, unet_minutes=args.unet_minutes, cache_size=args.cache_size,
                      clip_out=Path(args.clip_out), threads=args.threads, caption_mismatch=args.caption_mismatch,
                      unet_lr=args.unet_lr, init_from=Path(args.init_from) if args.init_from else None)
    if args.card:
        from ..recipe.model_card import card

        card(out, Path(args.run_dir))
    print(out)
    return 0


def run_train_classifier(args) -> int:
    from ..pipeline import Pipeline
    from ..recipe.classifier import train_classifier

    report = train_classifier(Pipeline.load(args.model), args.out, minutes=args.minutes, n=args.n, seed=args.seed,
                              latent_cache=Path(args.latent_cache) if args.latent_cache else None)
    print(json.dumps(report))
    return 0


def run_eval(args) -> int:
    from ..config import GenerationConfig
    from ..errors import ConfigError
    from ..pipeline import Pipeline
    from ..recipe.evaluate import evaluate

    if args.n < 1:
        raise ConfigError(f"--n is the number of samples per prompt set, at least 1; got {args.n}")
    for cfg in args.cfg or (None,):      # steps, scales, sampler and rescale checked before the model loads
        GenerationConfig("", steps=args.steps, cfg_scale=cfg, sampler=args.sampler,
                         guidance_rescale=args.guidance_rescale)
    report = evaluate(Pipeline.load(args.model), n=args.n, steps=args.steps, cfgs=args.cfg, sampler=args.sampler,
                      guidance_rescale=args.guidance_rescale)
    text = json.dumps(report, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text)
    print(text)
    return 0
