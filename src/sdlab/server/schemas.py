"""Request and response models of the HTTP API (pydantic); bad input becomes a 422 naming the field."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..sampling import sampler_names

MAX_PROMPT_CHARS = 2000
MAX_STEPS = 150
MAX_SIDE = 2048          # schema bound; the server's --max-side setting may be lower
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 4
MAX_WORDS = 16           # reweight / blend entries of an edit
MAX_WEIGHT = 10.0        # |reweight factor|, as sdlab.attention.edit allows

SamplerName = Literal[tuple(sampler_names())]  # type: ignore[valid-type]


def _clean_text(value: str, name: str) -> str:
    """Refuse control characters (other than newline and tab) and lone surrogates."""
    for ch in value:
        if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(f"{name} must not contain control characters (found U+{ord(ch):04X})")
    return value


class SamplingRequest(BaseModel):
    """Sampling settings shared by every job kind; seed null picks a random one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    steps: int = Field(25, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.5, ge=0.0, le=30.0)
    sampler: SamplerName = "Euler a"
    seed: Optional[int] = Field(None, ge=0, le=2**32 - 1)
    width: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="default: the model's size")
    height: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="default: the model's size")
    vae: Optional[str] = Field(None, max_length=255, pattern=r"^[^/\\]+$",
                               description="a VAE the server offers (`vaes` of /api/options); null: the server's own")

    @field_validator("negative_prompt")
    @classmethod
    def _negative(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)


class GenerateRequest(SamplingRequest):
    """A txt2img job: image i of the job uses seed + i."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, examples=["a large red circle on the left on a blue background"])
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    batch_count: int = Field(1, ge=1, le=MAX_BATCH_COUNT)
    guidance_rescale: float = Field(0.0, ge=0.0, le=1.0)
    trained: Optional[str] = Field(None, pattern=r"^[0-9a-f]{16}$",
                                   description="id of a finished train job: its LoRA or embedding is applied")
    trained_scale: float = Field(1.0, ge=-10.0, le=10.0, description="the trained LoRA's scale")

    @field_validator("prompt")
    @classmethod
    def _text(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)


class Img2ImgRequest(GenerateRequest):
    """An img2img job (SDEdit): the uploaded image, noised to `strength`, then denoised."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # the multipart form also holds `image`

    strength: float = Field(0.75, ge=0.0, le=1.0)


Place = Literal["down", "mid", "up"]
Word = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Weight = Annotated[float, Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)]


class AttendRequest(SamplingRequest):
    """Cross-attention maps of one image: an overlay per prompt token (sdlab.attention.store.attend)."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, examples=["a large red circle on the left on a blue background"])
    layers: list[Place] = Field(["down", "mid", "up"], min_length=1, max_length=3,
                                description="UNet places whose maps are averaged")

    @field_validator("prompt")
    @classmethod
    def _text(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)

    @field_validator("layers")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class EditRequest(SamplingRequest):
    """A prompt-to-prompt edit (Hertz et al. 2022): source and target sampled from one seed.
    The fractions are of the sampling steps; target null means the source (for reweight)."""

    source: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, examples=["a red circle on a blue background"])
    target: Optional[str] = Field(None, max_length=MAX_PROMPT_CHARS, examples=["a red square on a blue background"])
    mode: Literal["replace", "refine", "reweight"] = "replace"
    cross_replace: float = Field(0.8, ge=0.0, le=1.0)
    self_replace: float = Field(0.4, ge=0.0, le=1.0)
    reweight: dict[Word, Weight] = Field({}, max_length=MAX_WORDS, examples=[{"red": 2.0}])
    blend: list[Word] = Field([], max_length=MAX_WORDS, description="local blend: edit only where these words attend")
    blend_threshold: float = Field(0.3, ge=0.0, le=1.0)

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


MAX_TRAIN_STEPS = 500
MAX_TRAIN_IMAGES = 16


class TrainRequest(BaseModel):
    """A short personalisation run (sdlab.training) on the uploaded images; the loss streams as
    job metrics. lora: low-rank adapters (Hu et al. 2021); textual-inversion: a new token
    embedding (Gal et al. 2022)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # the multipart form also holds `images`

    method: Literal["lora", "textual-inversion"] = "lora"
    instance_prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, examples=["a sks shape"])
    max_steps: int = Field(50, ge=1, le=MAX_TRAIN_STEPS)
    learning_rate: Optional[float] = Field(None, gt=0.0, le=1.0, description="default: the method's")
    rank: int = Field(4, ge=1, le=64, description="lora rank")
    lora_targets: Literal["attention", "transformer", "all"] = Field(
        "attention", description="lora layers: attention projections, whole transformer blocks, or every conv too")
    placeholder: str = Field("<my-shape>", min_length=1, max_length=50, pattern=r"^\S+$",
                             description="textual inversion: the new token")
    initializer: str = Field("shape", min_length=1, max_length=50, description="textual inversion: start word(s)")
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
    model: Optional[str]
    native_size: Optional[int]
    loras: list[str] = Field(default_factory=list, description="names for <lora:NAME:W> prompt tags (--lora-dir)")
    vaes: list[str] = Field(default_factory=list, description="VAEs a job may pick by name (--vae-dir)")
    limits: dict[str, int]
