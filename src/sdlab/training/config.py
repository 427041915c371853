"""Frozen, validated settings of one training run (the loop's; each method adds its own)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..config import _check_float, _check_int
from ..errors import ConfigError

METHODS = ("textual-inversion", "dreambooth", "lora", "finetune", "vae-decoder")
MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                "warmup_stable_decay")
ATTENTION = ("default", "sdpa", "sliced")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """Everything the shared loop (sdlab.training.loop) needs; method options live in
    `options` (a frozen dataclass of the method's own)."""

    method: str
    data_dir: str
    output_dir: str
    model: str | None = None                 # None: the shipped shapes-world model
    instance_prompt: str | None = None       # folder without metadata.jsonl: one prompt for all
    resolution: int | None = None            # None: the model's native size
    center_crop: bool = True
    random_flip: bool = False
    cache_latents: bool = False              # encode each image once (centre crops only)
    aspect_buckets: bool = False             # keep aspect ratios: batches of one bucket each (sdlab.training.buckets)
    skip_bad_images: bool = False
    max_steps: int = 500
    learning_rate: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    attention: str = "default"
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lr_decay_steps: int | None = None        # warmup_stable_decay: cosine to 0 over the last N steps (default a third)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_8bit_adam: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    caption_dropout: float = 0.0             # share of samples trained on the empty prompt (keeps CFG working)
    shuffle_tags: bool = False               # shuffle a caption's comma-separated tags per sample (kohya)
    keep_tags: int = 0                       # ... after the first this many (e.g. the trigger word)
    snr_gamma: float | None = None           # Min-SNR-gamma loss weighting (Hang et al. 2023); 5 is the paper's
    noise_offset: float = 0.0                # offset noise (Guttenberg 2023): + this x N(0, 1) per sample and channel
    seed: int = 0
    checkpoint_every: int = 100
    keep_last: int = 2
    validation_prompts: tuple[str, ...] = ()
    validation_data: str | None = None       # a folder like data_dir whose validation loss is logged
    validation_split: float = 0.0            # ... or this share of data_dir's images, held out of training
    validate_every: int = 100
    validation_images: int = 2
    validation_steps: int = 20
    log_every: int = 1
    device: str | None = None
    options: object = None                   # the method's frozen option dataclass

    def __post_init__(self):
        _check_choice("method", self.method, METHODS)
        for name in ("data_dir", "output_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty path string, got {getattr(self, name)!r}")
        if self.resolution is not None:
            _check_int("resolution", self.resolution, 8, 4096)
            if self.resolution % 8:
                raise ConfigError(f"resolution must be a multiple of 8, got {self.resolution}")
        _check_int("max_steps", self.max_steps, 1)
        _check_float("learning_rate", self.learning_rate, 0.0, 10.0)
        _check_float("caption_dropout", self.caption_dropout, 0.0, 1.0)
        if self.snr_gamma is not None:
            _check_float("snr_gamma", self.snr_gamma, 1e-3, 1e4)
        _check_float("noise_offset", self.noise_offset, 0.0, 1.0)
        if self.cache_latents and not self.center_crop:
            raise ConfigError("cache_latents (--cache-latents) keeps one latent per image and flip, so it needs "
                              "centre crops: drop --random-crop or --cache-latents")
        _check_int("keep_tags", self.keep_tags, 0, 1000)
        if self.keep_tags and not self.shuffle_tags:
            raise ConfigError(f"keep_tags ({self.keep_tags}) says how many tags stay first when tags are shuffled: "
                              "turn on shuffle_tags (--shuffle-tags) or drop it")
        _check_int("batch_size", self.batch_size, 1, 4096)
        _check_int("grad_accum", self.grad_accum, 1, 4096)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _check_choice("attention", self.attention, ATTENTION)
        _check_choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULES)
        _check_int("lr_warmup_steps", self.lr_warmup_steps, 0)
        if self.lr_decay_steps is not None:
            if self.lr_scheduler != "warmup_stable_decay":
                raise ConfigError(f"lr_decay_steps is warmup_stable_decay's decay length; lr_scheduler is "
                                  f"{self.lr_scheduler!r}")
            _check_int("lr_decay_steps", self.lr_decay_steps, 1, max(1, self.max_steps - self.lr_warmup_steps))
        _check_float("adam_beta1", self.adam_beta1, 0.0, 0.999999)
        _check_float("adam_beta2", self.adam_beta2, 0.0, 0.999999)
        _check_float("adam_weight_decay", self.adam_weight_decay, 0.0, 1.0)
        _check_float("adam_epsilon", self.adam_epsilon, 0.0, 1.0)
        _check_float("max_grad_norm", self.max_grad_norm, 0.0)
        _check_float("ema_decay", self.ema_decay, 0.0, 1.0)
        _check_int("seed", self.seed, 0, 2**32 - 1)
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        _check_int("keep_last", self.keep_last, 1)
        if isinstance(self.validation_prompts, str) or not all(isinstance(p, str) for p in self.validation_prompts):
            raise ConfigError("validation_prompts must be a tuple of strings")
        _check_int("validate_every", self.validate_every, 1)
        _check_float("validation_split", self.validation_split, 0.0, 0.9)
        if self.validation_split and self.validation_data:
            raise ConfigError("give either validation_data (--validation-data) or validation_split "
                              "(--validation-split), not both")
        if self.validation_data is not None and (not isinstance(self.validation_data, str) or
                                                 not self.validation_data):
            raise ConfigError(f"validation_data must be a folder path, got {self.validation_data!r}")
        _check_int("validation_images", self.validation_images, 1, 64)
        _check_int("validation_steps", self.validation_steps, 1, 1000)
        _check_int("log_every", self.log_every, 1)
        if self.instance_prompt is not None and not isinstance(self.instance_prompt, str):
            raise ConfigError(f"instance_prompt must be a string, got {self.instance_prompt!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = asdict(self.options) if self.options is not None else None
        return d
