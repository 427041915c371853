"""`sdlab train textual-inversion|dreambooth|lora|finetune|vae-decoder` on the one training loop."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sdlab train textual-inversion --data shapes/ --placeholder "<my-shape>" --initializer shape --max-steps 500
  sdlab train lora --data shapes/ --instance-prompt "a sks shape" --rank 8 --output-dir runs/lora
  sdlab train dreambooth --data shapes/ --instance-prompt "a sks shape" --class-prompt "a shape"
  sdlab train finetune --data striped/ --ema
  sdlab train vae-decoder --data striped/ --batch-size 16 --max-steps 600   (then: sdlab generate --vae OUT/vae)
  sdlab train dreambooth ... --memory-budget 12GiB   (the fastest memory options that fit)
  sdlab train lora ... --resume latest          (continue exactly where a run stopped)
  accelerate launch --num_processes 2 -m sdlab.cli.main train lora ...   (see docs/training.md)
"""


def _common(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("model and data")
    opt = p.add_argument_group("optimisation")
    loss = p.add_argument_group("loss and captions")
    mem = p.add_argument_group("memory")
    logs = p.add_argument_group("checkpoints, validation and samples")
    data.add_argument("--model", default=None, help="diffusers folder or single file (default: the shipped model)")
    data.add_argument("--data", required=True,
                      help="image folder, captioned by metadata.jsonl or by NAME.txt beside each image (or give "
                           "--instance-prompt), or kohya's subfolders N_prompt (images repeated N times an epoch)")
    data.add_argument("--instance-prompt", default=None, help="one prompt for every image of --data")
    data.add_argument("--validation-data", "--val-data", dest="val_data", default=None, metavar="DIR",
                      help="images (captioned like --data) whose validation loss is logged every "
                           "--validate-every steps")
    data.add_argument("--validation-split", "--val-split", dest="val_split", type=float, default=0.0, metavar="SHARE",
                      help="hold this share of --data out of training for the validation loss instead (e.g. 0.1)")
    data.add_argument("--output-dir", default="runs/train", help="where checkpoints, logs, samples and results go")
    data.add_argument("--resolution", type=int, default=None, help="training size, multiple of 8 (default: native)")
    data.add_argument("--random-crop", action="store_true", help="random instead of centre crops")
    data.add_argument("--cache-latents", action="store_true",
                      help="encode each image (and its flip) with the VAE once, not every step: faster, centre crops "
                           "only (kohya's --cache_latents)")
    data.add_argument("--aspect-buckets", action="store_true",
                      help="keep each image's aspect ratio: crop it to the nearest of a set of sizes of about the "
                           "resolution's area (kohya's bucketing); a batch holds one size")
    data.add_argument("--flip", action="store_true", help="random horizontal flips")
    data.add_argument("--skip-bad-images", action="store_true", help="warn about and skip unreadable images")
    opt.add_argument("--max-steps", type=int, default=500)
    opt.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    opt.add_argument("--batch-size", type=int, default=1)
    opt.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    mem.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    mem.add_argument("--gradient-checkpointing", action="store_true")
    mem.add_argument("--attention", default="default", choices=("default", "sdpa", "sliced"))
    mem.add_argument("--use-8bit-adam", action="store_true", help="bitsandbytes AdamW8bit (CUDA only)")
    mem.add_argument("--memory-budget", default=None, metavar="SIZE",
                     help="e.g. 6GiB: pick the fastest memory options whose peak fits (CUDA: 2 trial steps per "
                          "option set; CPU: saved-tensor accounting); see docs/training.md")
    mem.add_argument("--memory-estimate", action="store_true",
                     help="with --memory-budget: plan from the analytic estimate, without trial steps")
    opt.add_argument("--lr-scheduler", default="constant",
                     help="constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial, "
                          "warmup_stable_decay (constant, then a cosine to 0 over --lr-decay-steps)")
    opt.add_argument("--lr-warmup-steps", type=int, default=0)
    opt.add_argument("--lr-decay-steps", type=int, default=None,
                     help="warmup_stable_decay's decay length (default: a third of --max-steps)")
    opt.add_argument("--ema", action="store_true", help="keep an EMA of the trained weights (saved results use it)")
    opt.add_argument("--ema-decay", type=float, default=0.9999)
    loss.add_argument("--snr-gamma", type=float, default=None,
                      help="Min-SNR-gamma loss weighting (Hang et al. 2023); 5.0 is the paper's choice")
    loss.add_argument("--shuffle-tags", action="store_true",
                      help="shuffle each caption's comma-separated tags per sample (kohya's --shuffle_caption)")
    loss.add_argument("--keep-tags", type=int, default=0,
                      help="with --shuffle-tags, keep this many leading tags in place (e.g. the trigger word)")
    loss.add_argument("--noise-offset", type=float, default=0.0,
                      help="offset noise (Guttenberg 2023): add this times a per-channel N(0, 1) shift to the noise, "
                           "so the model learns very dark and bright images; 0.05-0.1 is usual (default 0: off)")
    loss.add_argument("--caption-dropout", type=float, default=0.0,
                      help="share of samples trained with the empty prompt, so classifier-free guidance keeps "
                           "working when the UNet or text encoder change (e.g. 0.1)")
    opt.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the method's)")
    opt.add_argument("--seed", type=int, default=0)
    logs.add_argument("--checkpoint-every", type=int, default=100)
    logs.add_argument("--keep-last", type=int, default=2, help="checkpoints to keep")
    logs.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    logs.add_argument("--validation-prompt", action="append", default=[], help="prompt for sample grids (repeatable)")
    logs.add_argument("--validate-every", type=int, default=100)
    logs.add_argument("--validation-images", type=int, default=2, help="images per validation prompt")
    logs.add_argument("--validation-steps", type=int, default=20, help="sampling steps of validation images")
    opt.add_argument("--device", default=None, help="cpu or cuda (default: what accelerate picks)")


def _method_args(name: str, p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(f"{name} options")
    if name == "textual-inversion":
        g.add_argument("--placeholder", default="<my-shape>", help="the new token (default <my-shape>)")
        g.add_argument("--initializer", default="shape", help="word(s) whose embedding starts the new vectors")
        g.add_argument("--num-vectors", type=int, default=1, help="vectors per placeholder (N new tokens)")
        g.add_argument("--max-norm", type=float, default=None,
                       help="clip each new vector's norm after every step (e.g. the vocabulary's typical norm)")
        g.add_argument("--templates", default="object", choices=("object", "style", "none"),
                       help="prompt templates (none: use the captions, which must contain the placeholder)")
    if name == "lora":
        g.add_argument("--rank", type=int, default=4)
        g.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
        g.add_argument("--train-text-encoder", action="store_true", help="adapters on the text encoder too")
        g.add_argument("--targets", default="attention",
                       help="layers that get adapters: attention (q, k, v, out; default), transformer (+ proj_in/out "
                            "and feed-forward), all (+ every resnet conv and the samplers: LoCon), or module "
                            "names, e.g. to_q,to_v,conv1")
        g.add_argument("--new-token", default=None, metavar="PLACEHOLDER",
                       help="also learn an embedding for this new token, used in the captions (e.g. '<sks>'): "
                            "pivotal tuning; saved as textual inversion saves it")
        g.add_argument("--new-token-init", default="shape", help="the word the new token starts from")
        g.add_argument("--new-token-vectors", type=int, default=1, help="vectors of the new token")
        g.add_argument("--new-token-lr", type=float, default=None,
                       help="the new token's own learning rate (default: the adapters'; textual inversion's is 5e-3)")
        g.add_argument("--lr-ratio-b", type=float, default=1.0,
                       help="LoRA+ (Hayou et al. 2024): the B (up) matrices learn this many times faster than the "
                            "A (down) ones; 16 is the paper's choice (kohya's loraplus_lr_ratio; default 1: off)")
    if name in ("dreambooth", "lora"):
        g.add_argument("--class-prompt", action="append", default=None,
                       help="prompt of the class for prior preservation, e.g. 'a shape'; repeat for several "
                            "(class image i uses prompt i mod k)" + ("; turns the prior on" if name == "lora" else ""))
        g.add_argument("--class-data-dir", default=None,
                       help="class images cache (default OUTPUT/class_images); with captions (metadata.jsonl or "
                            ".txt files) and no --class-prompt, your own captioned class images")
        g.add_argument("--num-class-images", type=int, default=50)
        g.add_argument("--prior-loss-weight", type=float, default=1.0)
    if name == "dreambooth":
        g.add_argument("--no-prior-preservation", action="store_true")
        g.add_argument("--train-text-encoder", action="store_true")
    if name == "finetune":
        g.add_argument("--train-text-encoder", action="store_true", help="also tune the text encoder (default frozen)")
        g.add_argument("--train-vae-decoder", action="store_true",
                       help="also tune the VAE decoder on the images' round trip (for fine detail the decoder loses)")


def register(sub) -> None:
    p = sub.add_parser("train", help="personalize a model: textual inversion, DreamBooth, LoRA, fine-tune, VAE decoder",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name in ("textual-inversion", "dreambooth", "lora", "finetune", "vae-decoder"):
        q = methods.add_parser(name, help=f"train with {name}", epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(q)
        _method_args(name, q)
        q.set_defaults(run=run_train)


def method_from_args(args):
    """(method object, {learning_rate, weight_decay, options} defaults) for the parsed args."""
    from ..training.methods import build_method

    return build_method(args.method, vars(args))


def config_from_args(args, defaults: dict):
    from ..training.config import TrainingConfig

    return TrainingConfig(
        method=args.method, data_dir=args.data, output_dir=args.output_dir, model=args.model,
        instance_prompt=args.instance_prompt, resolution=args.resolution, center_crop=not args.random_crop,
        aspect_buckets=args.aspect_buckets, cache_latents=args.cache_latents,
        random_flip=args.flip, skip_bad_images=args.skip_bad_images, max_steps=args.max_steps,
        learning_rate=args.lr if args.lr is not None else defaults["learning_rate"],
        adam_weight_decay=args.weight_decay if args.weight_decay is not None else defaults["weight_decay"],
        batch_size=args.batch_size, grad_accum=args.grad_accum, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, attention=args.attention,
        use_8bit_adam=args.use_8bit_adam, lr_scheduler=args.lr_scheduler, lr_warmup_steps=args.lr_warmup_steps,
        lr_decay_steps=args.lr_decay_steps,
        use_ema=args.ema, ema_decay=args.ema_decay, caption_dropout=args.caption_dropout, snr_gamma=args.snr_gamma,
        noise_offset=args.noise_offset, shuffle_tags=args.shuffle_tags, keep_tags=args.keep_tags, seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        keep_last=args.keep_last, validation_prompts=tuple(args.validation_prompt),
        validate_every=args.validate_every, validation_images=args.validation_images,
        validation_steps=args.validation_steps, device=args.device, options=defaults["options"],
        validation_data=args.val_data, validation_split=args.val_split)


def fit_memory_budget(config, method, size: str, estimate: bool = False):
    """`config` with the fastest ladder rung whose peak fits `size`; says which on stderr."""
    import sys

    from ..training import memory

    budget = memory.parse_size(size)
    plan = memory.plan_for_budget(config, method, budget, measure=memory.estimate_step if estimate else None)
    print(f"sdlab train: {plan.explain()}", file=sys.stderr)
    return plan.config


def run_train(args) -> int:
    from ..errors import ConfigError
    from ..training.loop import train
    from ..training.memory import parse_size

    if args.memory_budget is not None:
        parse_size(args.memory_budget)          # a bad size fails before anything loads
    elif args.memory_estimate:
        raise ConfigError("--memory-estimate plans a --memory-budget; give one, e.g. --memory-budget 6GiB")
    method, defaults = method_from_args(args)
    config = config_from_args(args, defaults)
    if args.memory_budget is not None:
        config = fit_memory_budget(config, method, args.memory_budget, args.memory_estimate)
    result = train(config, method, resume=args.resume)
    for path in result.saved:
        print(path)
    return 0
