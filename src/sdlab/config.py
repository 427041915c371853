"""Frozen, validated settings. A bad value raises ConfigError naming the field and the range.

GenerationConfig is the one declaration of every generation setting: each field carries a
`Setting` (help text, range, CLI flag, the HTTP API's stricter bounds), from which its checks
here, `sdlab generate`'s options (sdlab.cli.options) and the HTTP request models
(sdlab.server.schemas) are derived.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Callable, Optional

from .errors import ConfigError

MAX_SIDE = 4096
MAX_SEED = 2**32 - 1        # seeds are 32-bit, as in AUTOMATIC1111


class _Same:
    """Setting.request_default when the CLI and HTTP default is the Python one."""

    def __repr__(self) -> str:
        return "SAME"


SAME = _Same()


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
class Setting:
    """What one config field means and allows, where every front end reads it.

    help: one line for `--help` and the OpenAPI description. lo/hi/multiple_of: the allowed
    range (checked at construction). flag/aliases: the CLI option (None: no option, e.g. the
    positional prompt). default_text: how help names a None default. request_default: the CLI
    and HTTP default where it differs from the Python one (seed: None, a random seed). http_hi:
    the HTTP API's stricter upper bound; http: more pydantic Field arguments. choices: a callable
    giving the allowed names. group: the section of `--help` the option is listed in."""

    help: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    multiple_of: Optional[int] = None
    flag: Optional[str] = ""               # "": --name-with-dashes
    aliases: tuple[str, ...] = ()
    default_text: Optional[str] = None
    request_default: Any = SAME
    http_hi: Optional[float] = None
    http: dict = field(default_factory=dict)
    choices: Optional[Callable[[], list[str]]] = None
    group: Optional[str] = None

    def option(self, name: str) -> Optional[str]:
        """The CLI option string of field `name` (None: not an option)."""
        return None if self.flag is None else self.flag or "--" + name.replace("_", "-")


def setting(default: Any = MISSING, help: str = "", **meta) -> Any:
    """A dataclass field with its Setting (keywords as in Setting)."""
    return field(default=default, metadata={"setting": Setting(help, **meta)})


def settings_of(cls) -> dict[str, tuple[Any, type, Setting]]:
    """{name: (default, type, Setting)} of a dataclass's declared settings, in field order
    (default MISSING for a required field)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f.default, hints[f.name], f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata}


def check_settings(obj) -> None:
    """Check each declared number of `obj` against its Setting's range (ConfigError naming it)."""
    for name, (_, kind, s) in settings_of(type(obj)).items():
        value = getattr(obj, name)
        if value is None or s.lo is None:
            continue
        if int in (kind, *typing.get_args(kind)):
            _check_int(name, value, s.lo, s.hi)
        else:
            _check_float(name, value, s.lo, s.hi)
        if s.multiple_of and value % s.multiple_of:
            raise ConfigError(f"{name} must be a multiple of {s.multiple_of}, got {value}")


def _sampler_names() -> list[str]:
    from .sampling import sampler_names

    return sampler_names()


def _schedule_names() -> list[str]:
    from .sampling import schedule_names

    return schedule_names()


def _hires_upscalers() -> list[str]:
    from .sampling.names import HIRES_UPSCALERS      # torch-free, for `sdlab generate --help`

    return list(HIRES_UPSCALERS)


_SIDE = dict(lo=8, hi=MAX_SIDE, multiple_of=8, default_text="the model's native size", http_hi=2048)
_TEXT = dict(max_length=2000)   # characters of a prompt over HTTP
# The hires fix's settings (txt2img only, as A1111): hires_scale > 1 turns it on, the rest shape the pass.
HIRES_FIELDS = ("hires_scale", "hires_strength", "hires_upscaler", "hires_steps", "hires_sampler")


@dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides a txt2img / img2img result (with the model and input image)."""

    prompt: str = setting(help="what to draw", flag=None,
                          http=dict(_TEXT, examples=["a large red circle on the left on a blue background"]))
    negative_prompt: str = setting("", "what to steer away from", aliases=("-n",), http=_TEXT)
    steps: int = setting(25, "sampling steps", lo=1, hi=1000, http_hi=150)
    cfg_scale: Optional[float] = setting(None, "classifier-free guidance scale", lo=0.0, hi=100.0, http_hi=30.0,
                                         default_text="the model's recommended scale (its generation_defaults.json; "
                                                      "7.5 when it names none)")
    sampler: str = setting("Euler a", "the sampler, by its AUTOMATIC1111 name", choices=_sampler_names)
    schedule: str = setting("Automatic", "the sigma schedule (A1111's Schedule type); Automatic: the one the "
                            "sampler's name carries (Karras for \"... Karras\"), else the model's timestep spacing",
                            choices=_schedule_names)
    seed: int = setting(0, "seed of the first image, 0 .. 2^32-1; image i uses seed+i, so the last image's seed "
                           "must stay below 2^32 too (a larger one is refused, not wrapped)",
                        lo=0, hi=MAX_SEED, request_default=None, default_text="random")
    batch_size: int = setting(1, "images per batch", lo=1, hi=256, http_hi=8)
    batch_count: int = setting(1, "number of batches", lo=1, hi=10000, http_hi=4)
    width: Optional[int] = setting(None, "image width, a multiple of 8", **_SIDE)
    height: Optional[int] = setting(None, "image height, a multiple of 8", **_SIDE)
    strength: float = setting(0.75, "how much img2img changes the image, in [0, 1]", lo=0.0, hi=1.0)
    guidance_rescale: float = setting(0.0, "CFG rescale phi in [0, 1] (Lin et al. 2023)", lo=0.0, hi=1.0)
    clip_skip: int = setting(1, "CLIP skip as A1111's: 1 = the text encoder's last layer, 2 = the penultimate "
                             "layer's output (through the final layer norm), ...", lo=1, hi=12)
    deep_shrink: float = setting(0.0, "Deep Shrink (kohya's Hires.fix): past the size the model was trained at, "
                                 "the UNet's features after its first down block are downscaled by this factor (2 "
                                 "for twice the size), so the subject is not drawn twice; 0 = off "
                                 "(sdlab.sampling.deep_shrink)", lo=0.0, hi=4.0, group="hires fix")
    hires_scale: float = setting(1.0, "hires fix: generate at the base size, upscale by this factor and "
                                 "img2img at the new size (1 = off; sdlab.sampling.hires)", lo=1.0, hi=4.0,
                                 group="hires fix")
    hires_strength: float = setting(0.7, "hires fix: denoising strength of the second pass (A1111's default)",
                                    lo=0.0, hi=1.0, group="hires fix")
    hires_upscaler: str = setting("latent", "hires fix: how the first pass is upscaled (latent: A1111's Latent, "
                                  "bilinear on the latents; lanczos: decode, Lanczos, encode)",
                                  choices=_hires_upscalers, group="hires fix")
    hires_steps: int = setting(0, "hires fix: steps of the second pass (0 = the same as steps)", lo=0, hi=1000,
                               http_hi=150, group="hires fix")
    hires_sampler: Optional[str] = setting(None, "hires fix: the second pass's sampler (A1111's Hires sampling "
                                           "method)", choices=_sampler_names, default_text="the same as --sampler",
                                           group="hires fix")

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise ConfigError(f"prompt must be a string, got {type(self.prompt).__name__}")
        if not isinstance(self.negative_prompt, str):
            raise ConfigError(f"negative_prompt must be a string, got {type(self.negative_prompt).__name__}")
        check_settings(self)
        n = self.batch_size * self.batch_count
        if self.seed + n - 1 > MAX_SEED:     # image i uses seed + i: refused, never wrapped
            raise ConfigError(f"seed must be between 0 and {MAX_SEED - n + 1} for {n} images (batch_size x "
                              f"batch_count), as image i uses seed + i and seeds are below 2^32; got {self.seed}")
        from .sampling.samplers import resolve_sampler

        resolve_sampler(self.sampler, self.schedule)
        if self.hires_sampler is not None:
            try:
                resolve_sampler(self.hires_sampler, self.schedule)
            except ConfigError as e:
                raise ConfigError(f"hires_sampler: {e}") from None
        from .sampling.hires import check_upscaler

        check_upscaler(self.hires_upscaler)
        from .sampling.deep_shrink import check_factor

        check_factor(self.deep_shrink)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
