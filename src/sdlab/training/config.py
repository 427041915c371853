"""Frozen, validated settings of one training run (the loop's; each method adds its own).

Each knob is declared once, here: its default, range, command-line flag and help (a
`sdlab.config.setting`); `sdlab train` derives its options from these fields, and a method's
recipe (`MethodSpec.recipe`, in the method's module) only changes their defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import _check_int, check_settings, setting, settings_of
from ..errors import ConfigError

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                "warmup_stable_decay")
ATTENTION = ("default", "sdpa", "sliced")
# sections of `sdlab train --help`
DATA, OPT, LOSS, MEM, LOGS = ("model and data", "optimisation", "loss and captions", "memory",
                              "checkpoints, validation and samples")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything the shared loop (sdlab.training.loop) needs; method options live in
    `options` (a frozen dataclass of the method's own)."""

    method: str
    data_dir: str = setting(help="image folder, captioned by metadata.jsonl or by NAME.txt beside each image (or give "
                            "--instance-prompt), or kohya's subfolders N_prompt (images repeated N times an epoch)",
                            flag="--data", group=DATA)
    output_dir: str = setting(help="where checkpoints, logs, samples and results go", group=DATA,
                              request_default="runs/train")
    model: str | None = setting(None, "diffusers folder or single file", default_text="the shipped model", group=DATA)
    instance_prompt: str | None = setting(None, "one prompt for every image of --data", group=DATA)
    resolution: int | None = setting(None, "training size, a multiple of 8", lo=8, hi=4096, multiple_of=8,
                                     default_text="the model's native size", group=DATA)
    center_crop: bool = setting(True, "random instead of centre crops", flag="--random-crop", group=DATA)
    random_flip: bool = setting(False, "random horizontal flips", flag="--flip", group=DATA)
    cache_latents: bool = setting(False, "encode each image (and its flip) with the VAE once, not every step: "
                                  "faster, centre crops only (kohya's --cache_latents)", group=DATA)
    aspect_buckets: bool = setting(False, "keep each image's aspect ratio: crop it to the nearest of a set of sizes "
                                   "of about the resolution's area (kohya's bucketing, sdlab.training.buckets); a "
                                   "batch holds one size", group=DATA)
    skip_bad_images: bool = setting(False, "warn about and skip unreadable images", group=DATA)
    max_steps: int = setting(500, "optimizer steps of the whole run", lo=1, group=OPT)
    learning_rate: float = setting(1e-4, "learning rate", lo=0.0, hi=10.0, flag="--lr", group=OPT)
    batch_size: int = setting(1, "images per step and process", lo=1, hi=4096, group=OPT)
    grad_accum: int = setting(1, "gradient accumulation steps", lo=1, hi=4096, group=OPT)
    mixed_precision: str = setting("no", "autocast precision (fp16 needs CUDA)", choices=lambda: MIXED_PRECISION,
                                   group=MEM)
    gradient_checkpointing: bool = setting(False, "recompute activations in backward (Chen et al. 2016): less "
                                           "memory, slower steps", group=MEM)
    attention: str = setting("default", "attention implementation", choices=lambda: ATTENTION, group=MEM)
    lr_scheduler: str = setting("constant", "learning-rate schedule (warmup_stable_decay: constant, then a cosine to "
                                "0 over --lr-decay-steps)", choices=lambda: LR_SCHEDULES, group=OPT)
    lr_warmup_steps: int = setting(0, "linear warm-up steps", lo=0, group=OPT)
    lr_decay_steps: int | None = setting(None, "warmup_stable_decay's decay length",
                                         default_text="a third of --max-steps", group=OPT)
    adam_beta1: float = setting(0.9, lo=0.0, hi=0.999999, flag=None)
    adam_beta2: float = setting(0.999, lo=0.0, hi=0.999999, flag=None)
    adam_weight_decay: float = setting(1e-2, "AdamW weight decay", lo=0.0, hi=1.0, flag="--weight-decay", group=OPT)
    adam_epsilon: float = setting(1e-8, lo=0.0, hi=1.0, flag=None)
    max_grad_norm: float = setting(1.0, lo=0.0, flag=None)
    use_8bit_adam: bool = setting(False, "bitsandbytes AdamW8bit (CUDA only)", group=MEM)
    use_ema: bool = setting(False, "keep an EMA of the trained weights (saved results use it)", flag="--ema",
                            group=OPT)
    ema_decay: float = setting(0.9999, "decay of the EMA", lo=0.0, hi=1.0, group=OPT)
    caption_dropout: float = setting(0.0, "share of samples trained with the empty prompt, so classifier-free "
                                     "guidance keeps working when the UNet or text encoder change (e.g. 0.1)",
                                     lo=0.0, hi=1.0, group=LOSS)
    shuffle_tags: bool = setting(False, "shuffle each caption's comma-separated tags per sample (kohya's "
                                 "--shuffle_caption)", group=LOSS)
    keep_tags: int = setting(0, "with --shuffle-tags, keep this many leading tags in place (e.g. the trigger word)",
                             lo=0, hi=1000, group=LOSS)
    snr_gamma: float | None = setting(None, "Min-SNR-gamma loss weighting (Hang et al. 2023); 5.0 is the paper's "
                                      "choice", lo=1e-3, hi=1e4, default_text="off", group=LOSS)
    noise_offset: float = setting(0.0, "offset noise (Guttenberg 2023): add this times a per-channel N(0, 1) shift "
                                  "to the noise, so the model learns very dark and bright images; 0.05-0.1 is usual, "
                                  "0 is off", lo=0.0, hi=1.0, group=LOSS)
    seed: int = setting(0, "seed of the data order, noise and timesteps", lo=0, hi=2**32 - 1, group=OPT)
    checkpoint_every: int = setting(100, "steps between checkpoints", lo=1, group=LOGS)
    keep_last: int = setting(2, "checkpoints to keep", lo=1, group=LOGS)
    validation_prompts: tuple[str, ...] = setting((), "prompt for sample grids (repeatable)",
                                                  flag="--validation-prompt", group=LOGS)
    validation_data: str | None = setting(None, "images (captioned like --data) whose validation loss is logged every "
                                          "--validate-every steps", flag="--validation-data", aliases=("--val-data",),
                                          group=DATA)
    validation_split: float = setting(0.0, "hold this share of --data out of training for the validation loss "
                                      "instead (e.g. 0.1)", lo=0.0, hi=0.9, flag="--validation-split",
                                      aliases=("--val-split",), group=DATA)
    validate_every: int = setting(100, "steps between validation losses and sample grids", lo=1, group=LOGS)
    validation_images: int = setting(2, "images per validation prompt", lo=1, hi=64, group=LOGS)
    validation_steps: int = setting(20, "sampling steps of validation images", lo=1, hi=1000, group=LOGS)
    log_every: int = setting(1, lo=1, flag=None)
    device: str | None = setting(None, "cpu or cuda", default_text="what accelerate picks", group=OPT)
    options: object = None                   # the method's frozen option dataclass

    def __post_init__(self):
        from .methods.registry import names

        _check_choice("method", self.method, names())
        for name in ("data_dir", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty path string, got {getattr(self, name)!r}")
        check_settings(self)
        for name, (_, _, s) in settings_of(TrainingConfig).items():
            if s.choices is not None:
                _check_choice(name, getattr(self, name), s.choices())
        if self.cache_latents and not self.center_crop:
            raise ConfigError("cache_latents (--cache-latents) keeps one latent per image and flip, so it needs "
                              "centre crops: drop --random-crop or --cache-latents")
        if self.keep_tags and not self.shuffle_tags:
            raise ConfigError(f"keep_tags ({self.keep_tags}) says how many tags stay first when tags are shuffled: "
                              "turn on shuffle_tags (--shuffle-tags) or drop it")
        if self.lr_decay_steps is not None:
            if self.lr_scheduler != "warmup_stable_decay":
                raise ConfigError(f"lr_decay_steps is warmup_stable_decay's decay length; lr_scheduler is "
                                  f"{self.lr_scheduler!r}")
            _check_int("lr_decay_steps", self.lr_decay_steps, 1, max(1, self.max_steps - self.lr_warmup_steps))
        if isinstance(self.validation_prompts, str) or not all(isinstance(p, str) for p in self.validation_prompts):
            raise ConfigError("validation_prompts must be a tuple of strings")
        if self.validation_split and self.validation_data:
            raise ConfigError("give either validation_data (--validation-data) or validation_split "
                              "(--validation-split), not both")
        if self.validation_data is not None and (not isinstance(self.validation_data, str) or
                                                 not self.validation_data):
            raise ConfigError(f"validation_data must be a folder path, got {self.validation_data!r}")
        if self.instance_prompt is not None and not isinstance(self.instance_prompt, str):
            raise ConfigError(f"instance_prompt must be a string, got {self.instance_prompt!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = asdict(self.options) if self.options is not None else None
        return d

