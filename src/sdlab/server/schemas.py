"""Request and response models of the HTTP API (pydantic); bad input becomes a 422 naming the field."""

from __future__ import annotations

import unicodedata
from dataclasses import MISSING
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, field_validator

from ..attention.edit import MAX_WEIGHT, EditConfig
from ..attention.store import ALL_PLACES
from ..config import HIRES_FIELDS, SAME, GenerationConfig, settings_of
from ..inpaint.options import INPAINT_STRENGTH, Expand, InpaintConfig


def http_bound(name: str) -> int:
    """The HTTP API's upper bound of a GenerationConfig setting (its own, where stricter)."""
    s = settings_of(GenerationConfig)[name][2]
    return s.http_hi if s.http_hi is not None else s.hi


MAX_PROMPT_CHARS = settings_of(GenerationConfig)["prompt"][2].http["max_length"]
MAX_STEPS = http_bound("steps")
MAX_SIDE = http_bound("width")     # schema bound; the server's --max-side setting may be lower
MAX_BATCH_SIZE = http_bound("batch_size")
MAX_BATCH_COUNT = http_bound("batch_count")
MAX_WORDS = 16           # reweight / blend entries of an edit


def _clean_text(value: str, name: str) -> str:
    """Refuse control characters (other than newline and tab) and lone surrogates."""
    for ch in value:
        if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(f"{name} must not contain control characters (found U+{ord(ch):04X})")
    return value


def declared(base: type[BaseModel], cls, *names: str) -> type[BaseModel]:
    """`base` with the named settings of the dataclass `cls` as fields: type, default, range
    (the HTTP bound where stricter) and description from the declaration (sdlab.config.setting)."""
    fields = {}
    for name in names:
        default, kind, s = settings_of(cls)[name]
        default = default if s.request_default is SAME else s.request_default
        if s.choices is not None:
            kind = Literal[tuple(s.choices())]
        if default is None:
            kind = Optional[kind]
        bounds = {} if s.lo is None else {"ge": s.lo, "le": s.hi if s.http_hi is None else s.http_hi}
        if s.multiple_of:
            bounds["multiple_of"] = s.multiple_of
        text = s.help + (f" (default: {s.default_text})" if default is None and s.default_text else "")
        fields[name] = (kind, Field(... if default is MISSING else default, description=text, **bounds, **s.http))
    return create_model(f"_{base.__name__}With_{'_'.join(names)}", __base__=base, **fields)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SamplingRequest(declared(_Request, GenerationConfig, "negative_prompt", "steps", "cfg_scale", "sampler",
                               "schedule", "seed", "width", "height")):
    """Sampling settings shared by every job kind; seed null picks a random one."""

    vae: Optional[str] = Field(None, max_length=255, pattern=r"^[^/\\]+$",
                               description="a VAE the server offers (`vaes` of /api/options); null: the server's own")

    @field_validator("negative_prompt")
    @classmethod
    def _negative(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)


class GenerateRequest(declared(SamplingRequest, GenerationConfig, "prompt", "batch_size", "batch_count",
                               "guidance_rescale", "clip_skip", "deep_shrink", *HIRES_FIELDS)):
    """A txt2img job: image i of the job uses seed + i; hires_scale > 1: a hires fix (txt2img only)."""

    trained: Optional[str] = Field(None, pattern=r"^[0-9a-f]{16}$",
                                   description="id of a finished train job: its LoRA or embedding is applied")
    trained_scale: float = Field(1.0, ge=-10.0, le=10.0, description="the trained LoRA's scale")

    @field_validator("prompt")
    @classmethod
    def _text(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)


class Img2ImgRequest(declared(GenerateRequest, GenerationConfig, "strength")):
    """An img2img job (SDEdit): the uploaded image, noised to `strength`, then denoised."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # the multipart form also holds `image`


class InpaintRequest(declared(Img2ImgRequest, InpaintConfig, *InpaintConfig.field_names())):
    """An inpaint job (sdlab.inpaint): the uploaded image with the white area of the uploaded mask
    repainted at `strength` (default 1, the measured recipe); or, with `expand`, outpainting (the
    image grown, no mask needed)."""

    strength: float = Field(INPAINT_STRENGTH, ge=0.0, le=1.0,
                            description="denoising strength of the masked area (1 ignores its pixels)")
    expand: Optional[str] = Field(None, max_length=100, examples=["left=16,top=8"],
                                  description="outpaint: pixels to add per side (left, top, right, bottom)")

    @field_validator("expand")
    @classmethod
    def _expand(cls, v: Optional[str]) -> Optional[str]:
        return None if v in (None, "") else str(Expand.parse(v))    # ConfigError -> 422 naming the sides


NAME_PATTERN = r"^[^/\\]+$"      # a name of a server folder's entry: one path component
MAX_CONTROL_SCALE = 2.0          # A1111 ControlNet's Control Weight slider (sdlab.control.spec.MAX_SCALE)
MAX_GRID_CELLS = 64


def _control_types() -> tuple[str, ...]:
    from ..control.preprocess import PREPROCESSORS

    return tuple(PREPROCESSORS)


class ControlRequest(GenerateRequest):
    """txt2img with one ControlNet (Zhang et al. 2023; sdlab.control): the uploaded control image,
    made into the condition by `control_type`, steers the ControlNet picked from the server's
    --controlnet-dir at `control_scale` over the steps from `control_start` to `control_end`."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # the multipart form also holds `control_image`

    controlnet: str = Field(max_length=255, pattern=NAME_PATTERN,
                            description="a ControlNet the server offers (`controlnets` of /api/options)")
    control_type: Literal[_control_types()] = Field(  # type: ignore[valid-type]
        "none", description="how the image becomes the condition: none (as is), mask, edges or layout")
    control_scale: float = Field(1.0, ge=0.0, le=MAX_CONTROL_SCALE, description="the control's weight")
    control_start: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps where it starts acting")
    control_end: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the steps where it stops")
    guess_mode: bool = Field(False, description="the ControlNet sees no prompt, on the conditional half only")


class GridRequest(GenerateRequest):
    """An X/Y/Z plot (A1111's script; sdlab.sampling.xyz_grid): one image per combination of the
    axes' values, in a labelled grid. An axis is AXIS=VALUES as `sdlab grid --x` takes it."""

    x: str = Field(min_length=1, max_length=500, examples=["steps=10,20,30"], description="the columns")
    y: Optional[str] = Field(None, max_length=500, examples=["cfg-scale=1,4,7.5"], description="the rows")
    z: Optional[str] = Field(None, max_length=500, description="one grid per value, side by side")
    vary_seeds: bool = Field(False, description="cell k uses seed + k (default: every cell the same seed)")

    @field_validator("x", "y", "z")
    @classmethod
    def _axis(cls, v: Optional[str], info) -> Optional[str]:
        return None if v in (None, "") else _clean_text(v, info.field_name)


class MergeRequest(_Request):
    """A checkpoint merge (A1111's Checkpoint Merger; sdlab.models.merge) of models or LoRA files the
    server offers (--merge-dir), written as `name` into the output folder's models/ (never replaced)."""

    a: str = Field(max_length=255, pattern=NAME_PATTERN, description="primary model or LoRA file")
    b: str = Field(max_length=255, pattern=NAME_PATTERN, description="secondary, of A's layout")
    c: Optional[str] = Field(None, max_length=255, pattern=NAME_PATTERN, description="tertiary, add-difference only")
    alpha: float = Field(ge=0.0, le=1.0, description="weighted: (1 - alpha) A + alpha B; add-difference: "
                                                     "A + alpha (B - C)")
    mode: Literal["weighted", "add-difference"] = "weighted"
    name: str = Field(min_length=1, max_length=100, pattern=NAME_PATTERN, examples=["merged"],
                      description="the output's name (a folder for model folders, NAME.safetensors otherwise)")

    @field_validator("c", mode="before")
    @classmethod
    def _empty(cls, v: Optional[str]) -> Optional[str]:
        return v or None


Place = Literal[ALL_PLACES]  # type: ignore[valid-type]
Word = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Weight = Annotated[float, Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)]


class AttendRequest(declared(SamplingRequest, GenerationConfig, "prompt", "clip_skip")):
    """Cross-attention maps of one image: an overlay per prompt token (sdlab.attention.store.attend)."""

    layers: list[Place] = Field(list(ALL_PLACES), min_length=1, max_length=len(ALL_PLACES),
                                description="UNet places whose maps are averaged")

    @field_validator("prompt")
    @classmethod
    def _text(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)

    @field_validator("layers")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class EditRequest(declared(declared(SamplingRequest, GenerationConfig, "clip_skip"), EditConfig,
                           "mode", "cross_replace", "self_replace", "blend_threshold")):
    """A prompt-to-prompt edit (Hertz et al. 2022): source and target sampled from one seed.
    The fractions are of the sampling steps; target null means the source (for reweight)."""

    source: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, examples=["a red circle on a blue background"])
    target: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS, examples=["a red square on a blue background"])
    reweight: dict[Word, Weight] = Field({}, max_length=MAX_WORDS, examples=[{"red": 2.0}])
    blend: list[Word] = Field([], max_length=MAX_WORDS, description="local blend: edit only where these words attend")

    @field_validator("source", "target")
    @classmethod
    def _text(cls, v: Optional[str], info) -> Optional[str]:
        return v if v is None else _clean_text(v, info.field_name)

    @field_validator("blend")
    @classmethod
    def _words(cls, v: list[str], info) -> list[str]:
        return [_clean_text(w, info.field_name) for w in v]

    @field_validator("reweight")
    @classmethod
    def _reweight_words(cls, v: dict[str, float], info) -> dict[str, float]:
        for w in v:
            _clean_text(w, info.field_name)
        return v


MAX_TRAIN_STEPS = 5000
MAX_TRAIN_IMAGES = 16


def _studio_methods() -> tuple[str, ...]:
    """The training methods the studio offers: those whose MethodSpec maps request fields."""
    from ..training.methods import registry

    return tuple(s.name for s in registry.specs() if s.studio)


def _recipe_steps() -> str:
    """The studio methods' default step counts (their measured recipes), for the field's description."""
    from ..training.methods import registry

    return ", ".join(f"{s.name} {s.defaults()['max_steps']}" for s in registry.specs() if s.studio)


def _option_default(request_field: str):
    """The default of the method option a TrainRequest field sets (MethodSpec.studio)."""
    import dataclasses

    from ..training.methods import registry

    spec = next(s for s in registry.specs() if s.studio and request_field in s.studio)
    return next(f.default for f in dataclasses.fields(spec.options) if f.name == spec.studio[request_field])


def _lora_presets() -> tuple[str, ...]:
    from ..training.methods.lora import TARGET_PRESETS

    return tuple(TARGET_PRESETS)


class TrainRequest(BaseModel):
    """A short personalisation run (sdlab.training) on the uploaded images; the loss streams as
    job metrics. lora: low-rank adapters (Hu et al. 2021); textual-inversion: a new token
    embedding (Gal et al. 2022). Each method's fields set its options (MethodSpec.studio)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # the multipart form also holds `images`

    method: Literal[_studio_methods()] = "lora"  # type: ignore[valid-type]
    instance_prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, examples=["a sks shape"])
    max_steps: Optional[int] = Field(None, ge=1, le=MAX_TRAIN_STEPS,
                                     description=f"default: the method's measured recipe ({_recipe_steps()})")
    learning_rate: Optional[float] = Field(None, gt=0.0, le=1.0, description="default: the method's")
    rank: int = Field(_option_default("rank"), ge=1, le=64, description="lora rank")
    lora_targets: Literal[_lora_presets()] = Field(  # type: ignore[valid-type]
        _option_default("lora_targets"),
        description="lora layers: attention projections, whole transformer blocks, or every conv too")
    placeholder: str = Field(_option_default("placeholder"), min_length=1, max_length=50, pattern=r"^\S+$",
                             description="textual inversion: the new token")
    initializer: str = Field(_option_default("initializer"), min_length=1, max_length=50,
                             description="textual inversion: start word(s)")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("instance_prompt", "placeholder", "initializer")
    @classmethod
    def _text(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)

    @field_validator("placeholder")
    @classmethod
    def _file_name(cls, v: str) -> str:
        from ..training.methods.textual_inversion import embedding_file_name

        embedding_file_name(v)          # it names the embedding file: checked again where that path is built
        return v


JobState = Literal["queued", "running", "done", "failed", "cancelled", "interrupted"]


class JobOut(BaseModel):
    """A job as stored, with live progress while it runs (`preview` is a data URL)."""

    id: str
    kind: str
    state: JobState
    params: dict[str, Any]
    result: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    attempts: int
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None
    step: int = 0
    total: int = 0
    progress: float = 0.0
    preview: Optional[str] = None
    metrics: dict[str, float] = {}
    losses: list[float] = []


class JobList(BaseModel):
    jobs: list[JobOut]
    counts: dict[str, int]


class GalleryItem(BaseModel):
    name: str
    url: str
    size: int
    modified: float
    grid: bool
    prompt: str = ""
    negative_prompt: str = ""
    parameters: Optional[str] = None
    params: dict[str, Any] = {}
    settings: Optional[dict[str, Any]] = None


class Gallery(BaseModel):
    items: list[GalleryItem]
    total: int


class Options(BaseModel):
    samplers: list[str]
    default_sampler: str
    schedules: list[str] = Field(default_factory=lambda: settings_of(GenerationConfig)["schedule"][2].choices(),
                                 description="sigma schedules (A1111's Schedule type) a job may pick")
    default_schedule: str = GenerationConfig.schedule
    model: Optional[str]
    native_size: Optional[int]
    default_cfg_scale: Optional[float] = Field(None, description="the model's recommended CFG scale, used when a job "
                                                                   "gives none (its generation_defaults.json)")
    loras: list[str] = Field(default_factory=list, description="names for <lora:NAME:W> prompt tags (--lora-dir)")
    vaes: list[str] = Field(default_factory=list, description="VAEs a job may pick by name (--vae-dir)")
    controlnets: list[str] = Field(default_factory=list, description="ControlNets a txt2img job may pick (--controlnet-dir)")
    control_types: list[str] = Field(default_factory=lambda: list(_control_types()))
    grid_axes: list[str] = Field(default_factory=list, description="what an X/Y/Z plot axis may vary")
    merge_models: list[str] = Field(default_factory=list, description="what a merge may pick (--merge-dir)")
    limits: dict[str, int]
