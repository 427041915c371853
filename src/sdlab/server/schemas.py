"""Request and response models of the HTTP API (pydantic); bad input becomes a 422 naming the field."""

from __future__ import annotations

import unicodedata
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..sampling import sampler_names

MAX_PROMPT_CHARS = 2000
MAX_STEPS = 150
MAX_SIDE = 2048          # schema bound; the server's --max-side setting may be lower
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 4

SamplerName = Literal[tuple(sampler_names())]  # type: ignore[valid-type]


def _clean_text(value: str, name: str) -> str:
    """Refuse control characters (other than newline and tab) and lone surrogates."""
    for ch in value:
        if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError(f"{name} must not contain control characters (found U+{ord(ch):04X})")
    return value


class GenerateRequest(BaseModel):
    """A txt2img job: image i of the job uses seed + i; seed null picks a random one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(max_length=MAX_PROMPT_CHARS, examples=["a large red circle on the left on a blue background"])
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    steps: int = Field(25, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.5, ge=0.0, le=30.0)
    sampler: SamplerName = "Euler a"
    seed: Optional[int] = Field(None, ge=0, le=2**32 - 1)
    width: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="default: the model's size")
    height: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="default: the model's size")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    batch_count: int = Field(1, ge=1, le=MAX_BATCH_COUNT)
    guidance_rescale: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)


class Img2ImgRequest(GenerateRequest):
    """An img2img job (SDEdit): the uploaded image, noised to `strength`, then denoised."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # the multipart form also holds `image`

    strength: float = Field(0.75, ge=0.0, le=1.0)


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
    limits: dict[str, int]
