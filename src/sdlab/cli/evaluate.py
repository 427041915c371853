"""`sdlab eval`: what a personalization run learned, per checkpoint, as a Markdown report."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  sdlab eval --run-dir runs/ti --token "<my-shape>" --concept shape=heart --out runs/ti/eval
  sdlab eval --artifact runs/lora/lora_kohya.safetensors --token "sks shape" --concept shape=heart
  sdlab eval --artifact runs/db/model --token "sks shape" --concept shape=heart --drift
  sdlab eval --run-dir runs/ft --world-prompts --concept fill=striped --vae runs/vae/vae    (a style fine-tune)
  sdlab eval --model sd15/ --run-dir runs/dog --token "sks dog" --concept-text "a dog" --oracle off
      --reference dog_photos/ --encoder clip-vit-b32/ --drift --class-prompt "a dog"    (any model: no oracle)
"""


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a learned concept (oracle rates, CLIP scores, drift) per checkpoint",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="base model (default: the shipped model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="a training output folder: every checkpoint is evaluated")
    src.add_argument("--artifact", action="append", help="embedding / LoRA file or model folder (repeatable)")
    p.add_argument("--token", default=None, help="how prompts name the concept (default <my-shape>)")
    p.add_argument("--concept", action="append", default=[], help="oracle target, e.g. shape=heart or fill=striped")
    p.add_argument("--world-prompts", action="store_true",
                   help="no token: sample the shapes world's own captions with the concept put in (a fine-tune on a "
                        "style or data set), and read how often the samples adopt it")
    p.add_argument("--vae", default=None, help="sample through this VAE (folder or file), e.g. a tuned decoder")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="add this embedding to every model read (e.g. a pivotal-tuning LoRA's learned_embeds)")
    p.add_argument("--concept-text", default=None, help="plain words for CLIP (default: 'a <value>')")
    p.add_argument("--n", type=int, default=16, help="samples per prompt")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--color", default="red", help="colour asked for in the fidelity prompt")
    p.add_argument("--lora-scale", type=float, default=1.0)
    p.add_argument("--reference", default=None, help="folder of reference images (default with the oracle: renders of the concept)")
    p.add_argument("--encoder", default=None, help="local feature model folder (default: the shipped CLIP)")
    p.add_argument("--no-clip", action="store_true", help="skip CLIP scores and the Frechet distance")
    p.add_argument("--drift", action="store_true", help="also measure drift on class prompts against the base model")
    p.add_argument("--max-drift", type=float, default=0.1,
                   help="with --drift, pick the best checkpoint only among those whose class-prompt accuracy (without "
                        "the oracle: same-seed similarity) fell by at most this (0-1; default 0.1)")
    p.add_argument("--min-diversity", type=float, default=0.25,
                   help="pick only checkpoints whose samples of 'a TOKEN' keep at least this share of the reference "
                        "images' own diversity, i.e. have not collapsed onto one picture (0-1; default 0.25; 0: off)")
    p.add_argument("--confirm-seed", type=int, default=None,
                   help="re-read the best checkpoint on fresh samples from this seed (the pick's own rates are biased up)")
    p.add_argument("--oracle", choices=("auto", "on", "off"), default="auto",
                   help="shapes-world oracle rates: auto = on for the shipped world's models, off for SD 1.x/2.x "
                        "(then only the encoder's scores)")
    p.add_argument("--context", default=None,
                   help="also sample 'a TOKEN CONTEXT' and CLIP-score it (prompt fidelity; default without the "
                        "oracle: 'on the beach')")
    p.add_argument("--class-prompt", default=None,
                   help="without the oracle, --drift compares base and tuned samples of this prompt (e.g. 'a dog')")
    p.add_argument("--baseline", action="store_true",
                   help="add a row for the base model itself (what the prompts gave before training)")
    p.add_argument("--out", default=None, help="report folder (default RUN/eval or ./eval)")
    p.set_defaults(run=run_eval)


def _concept(items: list[str]) -> dict:
    from ..errors import ConfigError
    from ..world import spec

    values = {"shape": spec.SHAPES, "color": tuple(spec.COLORS), "fill": spec.FILLS, "size": tuple(spec.SIZES),
              "position": tuple(spec.POSITIONS)}
    out = {}
    for item in items or ["shape=heart"]:
        key, _, value = item.partition("=")
        if key not in values or not value:
            raise ConfigError(f"--concept must be ATTR=VALUE with ATTR shape/color/fill/size/position, got {item!r}")
        if value not in values[key]:
            raise ConfigError(f"--concept {item}: the oracle knows {key} {', '.join(values[key])}")
        out[key] = value
    return out


def run_eval(args) -> int:
    import dataclasses

    from ..errors import ConfigError
    from ..evaluate import apply
    from ..evaluate.concept import concept_images, world_scenes
    from ..evaluate.features import Encoder
    from ..evaluate.report import BASELINE, EvalSettings, evaluate, pick_best, write_report
    from ..evaluate.scores import diversity
    from ..io.images import load_image
    from ..training.data import IMAGE_SUFFIXES
    from ..text.embeddings import load_embedding
    from ..world.render import render

    concept = _concept(args.concept)
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if args.run_dir and args.model is None:
        from ..training.loop import run_base_model

        args.model = run_base_model(args.run_dir)   # the run's own base model, when it recorded one
    if args.confirm_seed is not None and abs(args.confirm_seed - args.seed) < args.n:
        raise ConfigError(f"--confirm-seed {args.confirm_seed} reuses samples of --seed {args.seed} "
                          f"(seeds {args.seed}..{args.seed + args.n - 1}); pick one at least --n ({args.n}) away")
    if not 0.0 <= args.max_drift <= 1.0:
        raise ConfigError(f"--max-drift is a drop in accuracy between 0 and 1, got {args.max_drift}")
    if not 0.0 <= args.min_diversity <= 1.0:
        raise ConfigError(f"--min-diversity is a share of the reference images' diversity between 0 and 1, "
                          f"got {args.min_diversity}")
    needs_base = args.drift or (args.oracle == "auto" and args.model)
    base = apply.load_artifact(args.model, None, vae=args.vae) if needs_base else None
    oracle = args.oracle == "on" or (args.oracle == "auto" and (base is None or base.c.family == "custom"))
    base = base if args.drift else None
    if not oracle:
        if args.no_clip:
            raise ConfigError("without the oracle the scores come from the feature encoder: drop --no-clip")
        if not args.concept_text:
            raise ConfigError("without the oracle, say what the concept is for CLIP: --concept-text 'a dog'")
        if args.drift and not args.class_prompt:
            raise ConfigError("--drift without the oracle needs --class-prompt (e.g. 'a dog')")
    if args.world_prompts and args.token is not None:
        raise ConfigError("--world-prompts uses the world's captions, which name the concept by its own word "
                          f"({', '.join(concept.values())}): drop --token {args.token!r}")
    if args.world_prompts and not oracle:
        raise ConfigError("--world-prompts samples the shapes world's captions and needs its oracle: drop "
                          "--oracle off, or use a model of the shapes world")
    text = args.concept_text or "a " + " ".join(concept.values())
    s = EvalSettings(args.token or "<my-shape>", concept, text, args.n, args.seed, args.steps, args.cfg_scale,
                     args.color,
                     max_drift=args.max_drift, oracle=oracle, class_prompt=args.class_prompt,
                     context=args.context or (None if oracle else "on the beach"), world_prompts=args.world_prompts)
    encoder = None if args.no_clip else Encoder(args.encoder)
    if args.reference:
        reference = [load_image(p) for p in sorted(Path(args.reference).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    elif args.world_prompts:
        reference = [render(scene) for scene in world_scenes(concept, max(args.n, 8))[1]]   # what the captions ask for
    elif oracle:
        reference = concept_images(max(args.n, 8), shape=concept.get("shape", "heart"),
                                   fill=concept.get("fill", "solid"), seed=12345)
    else:
        reference = None                    # no renders of a real concept: image similarity needs --reference
    if encoder is not None and reference and len(reference) > 1 and args.min_diversity > 0:
        s.reference_diversity = diversity(encoder.images(reference))
        s.diversity_floor = args.min_diversity * s.reference_diversity
    if args.run_dir:
        targets = [(p.name, int(p.name.split("-")[1]), p) for p in apply.checkpoints_of(args.run_dir)]
    else:
        targets = [(Path(a).stem or Path(a).name, i, a) for i, a in enumerate(args.artifact)]
    if args.baseline:
        targets.insert(0, (BASELINE, 0, None))

    def read(name: str, target, settings: EvalSettings):
        pipe = apply.load_artifact(args.model, target, scale=args.lora_scale, vae=args.vae)
        for path in args.embedding:
            load_embedding(pipe, path)
        metrics, images = evaluate(pipe, settings, encoder, reference, base)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics, images

    rows = [(label, step, *read(label, target, s)) for label, step, target in targets]
    if args.run_dir:                          # what the run logged of each checkpoint: its validation loss
        from ..training.logs import validation_losses

        logged = validation_losses(args.run_dir)
        for label, step, metrics, _ in rows:
            if label != BASELINE and step in logged:
                metrics["val_loss"] = logged[step]
    confirmed = None
    if args.confirm_seed is not None:
        label, _, _, _ = pick_best(rows, s.max_drift, s.diversity_floor)
        target = next(t for lb, _, t in targets if lb == label)
        metrics, _ = read(f"{label} on seed {args.confirm_seed}", target,
                          dataclasses.replace(s, seed=args.confirm_seed))
        confirmed = (args.confirm_seed, metrics)
    out = Path(args.out or (Path(args.run_dir) / "eval" if args.run_dir else "eval"))
    print(write_report(out, rows, s, confirmed=confirmed))
    return 0
