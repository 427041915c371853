"""Frozen, validated settings. A bad value raises ConfigError naming the field and the range."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

MAX_SIDE = 4096
MAX_SEED = 2**32 - 1        # seeds are 32-bit, as in AUTOMATIC1111


def _check_int(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"{name} must be {rng}, got {value}")


def _check_float(name, value, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value != value or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"{name} must be {rng}, got {value}")


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides a txt2img / img2img result (with the model and input image)."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    cfg_scale: float = 7.5
    sampler: str = "Euler a"
    seed: int = 0
    batch_size: int = 1
    batch_count: int = 1
    width: int | None = None            # None: the model's native size
    height: int | None = None
    strength: float = 0.75              # img2img only
    guidance_rescale: float = 0.0

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise ConfigError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.negative_prompt, str):
            raise ConfigError(f"negative_prompt must be a string, got {type(self.negative_prompt).__name__}")
        _check_int("steps", self.steps, 1, 1000)
        _check_float("cfg_scale", self.cfg_scale, 0.0, 100.0)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_int("batch_size", self.batch_size, 1, 256)
        _check_int("batch_count", self.batch_count, 1, 10000)
        n = self.batch_size * self.batch_count
        if self.seed + n - 1 > MAX_SEED:     # image i uses seed + i: refused, never wrapped
            raise ConfigError(f"seed must be between 0 and {MAX_SEED - n + 1} for {n} images (batch_size x "
                              f"batch_count), as image i uses seed + i and seeds are below 2^32; got {self.seed}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None:
                _check_int(name, v, 8, MAX_SIDE)
                if v % 8:
                    raise ConfigError(f"{name} must be a multiple of 8, got {v}")
        _check_float("strength", self.strength, 0.0, 1.0)
        _check_float("guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        from .sampling.samplers import get_sampler

        get_sampler(self.sampler)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
