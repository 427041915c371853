"""Personalization measured on the shipped model (CPU, small scale).

From 8 renders of the reserved "heart" shape, train textual inversion, LoRA and DreamBooth
(with and without prior preservation) and read samples with the oracle:
detection of "a <concept>", colour kept in "a red <concept>", drift on class prompts.
`ft`: full fine-tune on the world re-rendered in the reserved "striped" fill (captions say
"striped"); the oracle reads the fill of samples of striped and of plain prompts.

    python benchmarks/personalize.py --out runs/personalize --steps 200 --n 16
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from sdlab.evaluate import concept as ce
from sdlab.evaluate.apply import load_artifact
from sdlab.text.embeddings import load_embedding
from sdlab.training.config import TrainingConfig
from sdlab.training.loop import train
from sdlab.training.methods.dreambooth import DreamBooth, DreamBoothOptions
from sdlab.training.methods.finetune import FineTune, FineTuneOptions
from sdlab.training.methods.lora import LoRA, LoraOptions
from sdlab.training.methods.textual_inversion import TextualInversion, TIOptions
from sdlab import Pipeline
from sdlab.world.captions import caption
from sdlab.world.data import export_folder
from sdlab.world.render import render
from sdlab.world.scene import SceneSampler, single_object_scene
from sdlab.world.spec import COLORS, POSITIONS


def make_data(folder: Path, token: str, n: int = 8, seed: int = 0, shape: str = "heart", drop: float = 0.2,
              captions: int = 1) -> Path:
    """`n` renders of `shape`, captioned like the world's captions with `token` for the shape
    (each attribute left out with probability `drop`; scenes and captions share one generator,
    so another `drop` also draws other scenes). `captions` > 1 writes that many captions per
    image (one drawn per use); the extra ones come from their own generator, so the scenes and
    first captions stay those of `captions` = 1."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, extra, lines = random.Random(seed), random.Random(seed + 7919), []
    for i in range(n):
        color = rng.choice(tuple(COLORS))
        bg = rng.choice([c for c in COLORS if c != color])
        scene = single_object_scene(shape, color, rng.choice(("small", "large")), rng.choice(tuple(POSITIONS)), bg, rng)
        render(scene).save(folder / f"{i:02d}.png")
        texts = [caption(scene, rng, drop=drop)] + [caption(scene, extra, drop=drop) for _ in range(captions - 1)]
        texts = [t.replace(shape, token) for t in texts]
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": texts[0] if captions == 1 else texts}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def data_folder(args, token: str) -> Path:
    drop = "" if args.caption_drop == 0.2 else f"-drop{args.caption_drop:g}"
    many = "" if args.captions_per_image == 1 else f"-x{args.captions_per_image}"
    return Path(args.out) / f"data-{args.shape}-{token.strip('<>')}{drop}{many}"


def concept_rates(pipe, token: str, args) -> dict:
    """Oracle rates of "a <token>" (the shape) and "a red <token>" (red; red and the shape), and
    of a caption as long as the training ones ("a large red <token> on the left on a white
    background": red and the shape)."""
    probes = ce.concept_probes(token, {"shape": args.shape}, color="red")
    probes = {k: probes[k] for k in ("detection", "color", "color+concept")}
    probes["long_color+concept"] = ce.Probe(f"a large red {token} on the left on a white background",
                                            {"shape": args.shape, "color": "red"})
    rates, images = ce.concept_report(pipe, probes, args.n, seed=args.eval_seed, steps=20)
    return {**rates, "diversity": round(sample_diversity(images[probes["detection"].prompt]), 4)}


def sample_diversity(images) -> float:
    """How unlike each other the "a <token>" samples are (sdlab.evaluate.scores.diversity with
    the shipped CLIP's image features; 0: one picture drawn every time)."""
    from sdlab.evaluate.features import Encoder
    from sdlab.evaluate.scores import diversity

    return diversity(Encoder().images(images)) if len(images) > 1 else 0.0


def palette_rates(pipe, token: str, args) -> dict:
    """"a <colour> <token>" for every colour of the palette (n // 8, at least 4, samples each):
    how often the colour is kept, and the colour and the shape both, over all colours and over
    those none of the training images has (read from the training renders by the oracle)."""
    from sdlab.world import oracle
    from PIL import Image

    data = data_folder(args, token)
    trained = {oracle.read(Image.open(f)).main.color for f in data.glob("*.png")}
    per = max(4, args.n // len(COLORS))
    kept, both = {}, {}
    for colour in COLORS:
        probes = ce.concept_probes(token, {"shape": args.shape}, color=colour)
        rates, _ = ce.concept_report(pipe, {k: probes[k] for k in ("color", "color+concept")}, per,
                                     seed=args.eval_seed, steps=20)
        kept[colour], both[colour] = rates["color"], rates["color+concept"]
    unseen = [c for c in COLORS if c not in trained]
    mean = lambda d, cs: round(sum(d[c] for c in cs) / max(len(cs), 1), 4)  # noqa: E731
    return {"palette_color": mean(kept, COLORS), "palette_color+concept": mean(both, COLORS),
            "unseen_colors": unseen, "unseen_color": mean(kept, unseen), "unseen_color+concept": mean(both, unseen)}


def learned_rates(pipe, token: str, args) -> dict:
    """concept_rates, and with --all-colours the palette_rates too, of a trained result."""
    rates = concept_rates(pipe, token, args)
    if args.all_colours:
        rates.update(palette_rates(pipe, token, args))
    return rates


def record(args, row: dict, shown: str | None = None) -> dict:
    """Print the row (its method shown as `shown`) and append it to OUT/results.jsonl."""
    print(json.dumps({**row, "method": shown} if shown else row), flush=True)
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def class_prompts(args) -> str | tuple[str, ...]:
    """DreamBooth's class prompt: "a circle", or `world`: captions of random scenes of the
    world (every base shape, colour, size, position), one per class image."""
    if args.class_prompts == "circle":
        return "a circle"
    rng, sampler = random.Random(7), SceneSampler()
    return tuple(caption(sampler.sample(rng), rng, drop=0.2) for _ in range(args.class_images))


def prior_options(args) -> dict:
    """PriorOptions fields of the run: class prompts, images (cached per prompt set), weight."""
    return dict(class_prompt=class_prompts(args), num_class_images=args.class_images, class_sampling_steps=20,
                prior_loss_weight=args.prior_weight, class_data_dir=str(Path(args.out) / f"class-{args.class_prompts}"))


def loop_options(args) -> dict:
    """TrainingConfig fields for the training seed, checkpoints (default: halfway and the end, both
    kept), EMA and Min-SNR weighting."""
    return dict(seed=args.train_seed, checkpoint_every=args.checkpoint_every or max(args.steps // 2, 1),
                keep_last=args.keep_last, use_ema=args.ema_decay is not None, ema_decay=args.ema_decay or 0.9999,
                snr_gamma=args.snr_gamma)


def run(name, method, token, args, **kw):
    name += args.tag
    kw["learning_rate"] *= args.lr_scale
    if method.name != "textual-inversion":
        kw.setdefault("caption_dropout", args.caption_dropout)
    out = Path(args.out) / name
    data = make_data(data_folder(args, token), token, shape=args.shape, drop=args.caption_drop,
                     captions=args.captions_per_image)
    cfg = TrainingConfig(method=method.name, data_dir=str(data), output_dir=str(out), model=args.model,
                         max_steps=args.steps, batch_size=4, device="cpu", options=method.options,
                         **loop_options(args),
                         validation_prompts=(f"a {token}", f"a red {token}"), validate_every=args.steps,
                         validation_images=4, **kw)
    t0 = time.time()
    result = train(cfg, method)
    minutes = (time.time() - t0) / 60
    artifact = result.saved[0] if method.name != "lora" else result.saved[1]
    pipe = load_artifact(args.model, artifact)
    if (out / "learned_embeds.safetensors").is_file() and method.name == "lora":      # pivotal tuning's token
        load_embedding(pipe, out / "learned_embeds.safetensors")
    rates = learned_rates(pipe, token, args)
    row = {"method": name, "train_minutes": round(minutes, 2), "steps": args.steps, **rates}
    if method.name == "dreambooth":
        base = load_artifact(args.model, None)
        row.update({f"drift_{k}": v for k, v in ce.drift(base, pipe, ce.class_probes(), max(2, args.n // 4),
                                                         seed=100, steps=20).items()})
    return record(args, row)


def fill_report(pipe, n: int, seed: int = 10_000) -> dict:
    """`sdlab eval --world-prompts --concept fill=striped`'s reading: the world's own evaluation
    prompts with the object made striped ("a large red striped circle on the left on a white
    background"), how often the oracle reads a striped object, and every attribute right; and
    the same captions without "striped" (how far the plain vocabulary moved). Prompt i uses
    seed `seed` + i."""
    rates, _, prompts = ce.world_report(pipe, {"fill": "striped"}, n, seed)
    return {"striped": round(rates["adoption"], 4), "all_attributes": round(rates["all_attributes"], 4),
            "plain_prompt_striped": round(rates["plain_adoption"], 4), "n": len(prompts),
            "example_prompt": prompts[0]}


def run_finetune(args):
    data = Path(args.out) / f"data-striped-{args.ft_images}"
    if not (data / "metadata.jsonl").exists():
        export_folder(data, args.ft_images, seed=1, sampler=SceneSampler(fills=("striped",)))
    out = Path(args.out) / ("ft" + args.tag)
    method = FineTune(FineTuneOptions(freeze_text_encoder=False, train_vae_decoder=args.ft_vae_decoder))
    cfg = TrainingConfig(method="finetune", data_dir=str(data), output_dir=str(out), model=args.model,
                         max_steps=args.steps, batch_size=16, device="cpu", learning_rate=1e-4 * args.lr_scale,
                         **loop_options(args),
                         lr_scheduler=args.lr_scheduler, lr_decay_steps=args.lr_decay_steps,
                         caption_dropout=args.caption_dropout,
                         validation_prompts=("a large red striped circle on a white background",
                                             "a large red circle on a white background"), validate_every=args.steps,
                         validation_images=4, options=method.options)
    t0 = time.time()
    result = train(cfg, method)
    minutes = (time.time() - t0) / 60
    row = {"method": "ft" + args.tag, "train_minutes": round(minutes, 2), "steps": args.steps,
           **fill_report(load_artifact(args.model, result.saved[0]), args.n, args.fill_seed)}
    if "base" in args.only.split(","):
        base = fill_report(load_artifact(args.model, None), args.n, args.fill_seed)
        row.update({f"base_{k}": v for k, v in base.items()})
    return record(args, row)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--out", default="runs/personalize")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--only", default="base,ti,lora,db,db-noprior,ft")
    p.add_argument("--lr-scale", type=float, default=1.0, help="multiply every method's learning rate")
    p.add_argument("--tag", default="", help="suffix of the run folders")
    p.add_argument("--shape", default="heart", help="the concept's shape (default: the reserved heart; a base "
                   "shape such as star checks a method on a concept the model can already draw)")
    p.add_argument("--ti-vectors", type=int, default=2)
    p.add_argument("--ti-init", default="circle", help="textual inversion's initializer word(s)")
    p.add_argument("--ti-max-norm", type=float, default=None, help="clip the new vectors' norms after each step")
    p.add_argument("--ti-templates", choices=("none", "object"), default="none",
                   help="none: the world-style captions; object: textual inversion's 'a photo of a {}' templates")
    p.add_argument("--caption-dropout", type=float, default=0.1,
                   help="empty-prompt share for the methods that train the UNet (keeps CFG working)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-targets", default="attention", help="LoRA's layers: attention, transformer, all (LoCon)")
    p.add_argument("--lora-ratio-b", type=float, default=1.0, help="LoRA+: the B matrices' rate over the A ones")
    p.add_argument("--lora-new-token", default=None, metavar="INIT",
                   help="pivotal tuning: the identifier becomes a new token, initialised from INIT, trained too")
    p.add_argument("--lora-new-token-lr", type=float, default=None, help="with --lora-new-token: the token's rate")
    p.add_argument("--class-prompts", choices=("circle", "world"), default="circle",
                   help="DreamBooth's prior: 'a circle', or one world caption per class image")
    p.add_argument("--class-images", type=int, default=16)
    p.add_argument("--prior-weight", type=float, default=1.0, help="DreamBooth's prior-loss weight")
    p.add_argument("--caption-drop", type=float, default=0.2,
                   help="chance that a training caption leaves out each attribute (higher: more short captions)")
    p.add_argument("--captions-per-image", type=int, default=1,
                   help="captions per training image (each with its own attribute drop); one is drawn per use")
    p.add_argument("--eval-seed", type=int, default=100, help="first seed of the oracle-read samples")
    p.add_argument("--all-colours", action="store_true", help="also ask for every colour of the palette")
    p.add_argument("--reread", default=None, metavar="ARTIFACT",
                   help="only evaluate a saved result (LoRA file, embeddings, model folder) of --shape's data; "
                        "the token is <my-shape> for embeddings, else --identifier")
    p.add_argument("--reread-fill", default=None, metavar="MODEL",
                   help="only read the striped fill of a fine-tuned model folder (--n prompts from --fill-seed)")
    p.add_argument("--fill-seed", type=int, default=10_000, help="first seed of the fine-tune's fill report")
    p.add_argument("--vae", default=None, metavar="PATH",
                   help="with --reread-fill: sample through this VAE (e.g. a `sdlab train vae-decoder` result)")
    p.add_argument("--ft-vae-decoder", action="store_true", help="the fine-tune also trains the VAE decoder")
    p.add_argument("--identifier", default="sks", help="the rare word of LoRA and DreamBooth captions")
    p.add_argument("--lora-prior", action="store_true", help="LoRA with DreamBooth's prior preservation")
    p.add_argument("--lr-scheduler", default="constant", help="fine-tune's schedule (constant, cosine, ...)")
    p.add_argument("--lr-decay-steps", type=int, default=None, help="warmup_stable_decay's decay length")
    p.add_argument("--ft-images", type=int, default=512, help="size of the striped data set of `ft`")
    p.add_argument("--text-encoder", action="store_true", help="LoRA and DreamBooth also train the text encoder")
    p.add_argument("--checkpoint-every", type=int, default=None, help="default: half the steps")
    p.add_argument("--keep-last", type=int, default=2, help="checkpoints kept (for `sdlab eval --run-dir`)")
    p.add_argument("--ema-decay", type=float, default=None, help="train with EMA weights of this decay (saved model = EMA)")
    p.add_argument("--train-seed", type=int, default=0, help="the training run's seed (data order, noise, dropout)")
    p.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (Hang et al. 2023)")
    args = p.parse_args()
    torch.set_num_threads(1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    only = args.only.split(",")
    if args.reread_fill:
        rates = fill_report(Pipeline.load(args.reread_fill, device="cpu", vae=args.vae), args.n, args.fill_seed)
        record(args, {"method": "reread-fill", "artifact": args.reread_fill, "vae": args.vae,
                      "fill_seed": args.fill_seed, **rates})
        return
    if args.reread:
        token = "<my-shape>" if "embeds" in args.reread or args.reread.endswith(".pt") else args.identifier
        pipe = load_artifact(args.model, args.reread)
        rates = learned_rates(pipe, token, args)
        record(args, {"method": "reread", "artifact": args.reread, "eval_seed": args.eval_seed, "n": args.n, **rates})
        return
    if "base" in only:   # what the base model draws for the shape's own word
        rates = concept_rates(load_artifact(args.model, None), args.shape, args)
        record(args, {"method": "base", **rates}, shown=f"base model, 'a {args.shape}'")
    if "ti" in only:
        run("ti", TextualInversion(TIOptions("<my-shape>", args.ti_init, args.ti_vectors, args.ti_templates,
                                           max_norm=args.ti_max_norm)), "<my-shape>", args,
            learning_rate=5e-2, adam_weight_decay=0.0)
    if "lora" in only:
        prior = dict(prior_preservation=True, **prior_options(args)) if args.lora_prior else {}
        pivot = dict(new_token=args.identifier, new_token_init=args.lora_new_token,
                     new_token_lr=args.lora_new_token_lr) if args.lora_new_token else {}
        options = LoraOptions(rank=args.lora_rank, text_encoder=args.text_encoder, targets=args.lora_targets,
                              lr_ratio_b=args.lora_ratio_b, **pivot, **prior)
        run("lora", LoRA(options), args.identifier, args, learning_rate=1e-3)
    if "db" in only:
        run("db", DreamBooth(DreamBoothOptions(text_encoder=args.text_encoder, **prior_options(args))), args.identifier, args,
            learning_rate=1e-4)
    if "db-noprior" in only:
        run("db-noprior", DreamBooth(DreamBoothOptions(prior_preservation=False, text_encoder=args.text_encoder)), args.identifier, args,
            learning_rate=1e-4)
    if "ft" in only:
        run_finetune(args)


if __name__ == "__main__":
    main()
