"""An AUTOMATIC1111-compatible HTTP API under /sdapi/v1 (txt2img, img2img, samplers, schedulers,
sd-models, options, progress, interrupt), so A1111 clients such as `webuiapi` drive `sdlab serve`.

Requests use A1111's field names (StableDiffusionProcessingTxt2Img / Img2Img of its
modules/api/models.py); unknown fields are ignored as A1111 ignores them, and features sdlab
lacks (face restoration, scripts, ...) are refused with a 422 when
asked for, never silently dropped. Every image job goes through the studio's job queue (one
model, shared progress and cancel); img2img with a `mask` is an inpaint job (sdlab.inpaint, A1111's
mask_blur, inpainting_fill, inpaint_full_res, its padding and inpainting_mask_invert); txt2img and img2img
block until the job ends, as in A1111,
and reply with the saved PNGs (A1111 `parameters` chunk included) in base64.

All routes live under PREFIX, where the body-limit middleware allows JSON bodies that hold a
base64 image of up to the upload limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from typing import Any, Callable, Optional

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import __version__
from ..errors import ConfigError
from ..inpaint.options import MASKED_CONTENT
from ..io.metadata import SCHEDULE_LABELS, parse_infotext
from ..models.vae_file import vae_names
from ..sampling import SAMPLERS, get_sampler, sampler_names, schedule_kind
from .files import safe_output_path, save_upload
from .schemas import (MAX_BATCH_COUNT, MAX_BATCH_SIZE, MAX_PROMPT_CHARS, MAX_SIDE, MAX_STEPS, GenerateRequest,
                      Img2ImgRequest, InpaintRequest, _clean_text, http_bound)
from .runners import inpaint_inputs
from .settings import ServerSettings
from .store import TERMINAL

PREFIX = "/sdapi/v1"
POLL_SECONDS = 0.05
# k-diffusion names A1111 lists as aliases; a "Karras" variant takes the alias plus "_ka".
_BASE_ALIASES = {"Euler a": ["k_euler_a", "k_euler_ancestral"], "Euler": ["k_euler"], "LMS": ["k_lms"],
                 "Heun": ["k_heun"], "DPM++ 2M": ["k_dpmpp_2m"], "DPM++ SDE": ["k_dpmpp_sde"],
                 "DPM++ 2M SDE": ["k_dpmpp_2m_sde"], "DPM++ 3M SDE": ["k_dpmpp_3m_sde"], "DDIM": ["ddim"],
                 "UniPC": ["unipc"], "LCM": ["k_lcm"], "Restart": ["restart"]}
# A1111's sampler options: what "automatic" means for each (sd_samplers_kdiffusion.py, sd_samplers_extra.py)
DEFAULT_SCHEDULER = {"DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM++ 2M SDE": "exponential",
                     "DPM++ 3M SDE": "exponential", "Restart": "karras"}
NO_VAE = ("Automatic", "None")      # A1111's sd_vae values for "the model's own VAE"
STUDIO_MODELS = {"txt2img": GenerateRequest, "img2img": Img2ImgRequest, "inpaint": InpaintRequest}   # the studio's checks of a job


def sampler_aliases(name: str) -> list[str]:
    """A1111's aliases of a sampler name ("DPM++ 2M Karras" -> ["k_dpmpp_2m_ka"])."""
    base, karras = (name.removesuffix(" Karras"), name.endswith(" Karras"))
    return [f"{a}_ka" if karras else a for a in _BASE_ALIASES.get(base, [])]


SAME_SAMPLER = "Use same sampler"      # A1111's hr_sampler_name for "the first pass's"


def resolve_sampler(name: str, scheduler: Optional[str]) -> tuple[str, str]:
    """(sdlab's sampler, schedule) for A1111's sampler name (or alias) and scheduler (name or label),
    as A1111's get_sampler_and_scheduler: a name that carries a schedule ("DPM++ 2M Karras") keeps it,
    "automatic" takes the sampler's A1111 default (Karras for DPM++ 2M). A Karras schedule is given as
    the "X Karras" sampler where one is registered (as sdlab writes it), else as the schedule."""
    by_alias = {a: n for n in sampler_names() for a in sampler_aliases(n)}
    spec = get_sampler(by_alias.get(name.strip().lower(), name))
    if spec.sigma_kind != "default":      # registered ("DPM++ 2M Karras") or not ("DPM++ 2M Exponential")
        return (spec.name, "Automatic") if spec.name in SAMPLERS else (spec.base, SCHEDULE_LABELS[spec.sigma_kind])
    kind = schedule_kind(scheduler or "automatic")
    if kind == "automatic":
        kind = DEFAULT_SCHEDULER.get(spec.name, kind)
    if kind == "karras" and f"{spec.name} Karras" in SAMPLERS:
        return f"{spec.name} Karras", "Automatic"
    return spec.name, SCHEDULE_LABELS[kind]


class A1111Request(BaseModel):
    """Fields of A1111's processing request that sdlab honours; see the module docstring. The
    defaults are A1111's own (50 steps, CFG 7, Euler: what its clients expect), not sdlab's;
    the bounds are the studio's (sdlab.server.schemas)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    styles: list[str] = Field([], description="must be empty: this server has no prompt styles")
    seed: int = Field(-1, ge=-1, le=2**32 - 1, description="-1: a random seed")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, description="must be 0: no variation seeds")
    sampler_name: Optional[str] = Field(None, max_length=100, description="default: sampler_index")
    sampler_index: Optional[str] = Field("Euler", max_length=100)
    scheduler: Optional[str] = Field(None, max_length=100, description="automatic or a schedule of GET schedulers")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=MAX_BATCH_COUNT)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0.0, le=http_bound("cfg_scale"))
    width: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="default: the model's size")
    height: Optional[int] = Field(None, ge=8, le=MAX_SIDE, multiple_of=8, description="default: the model's size")
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    override_settings: dict[str, Any] = Field({}, description="sd_model_checkpoint, sd_vae and "
                                              "CLIP_stop_at_last_layers are read")
    script_name: Optional[str] = None
    alwayson_scripts: dict[str, Any] = {}
    send_images: bool = True
    save_images: bool = Field(False, description="ignored: images are always saved in the output folder")

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, v: str, info) -> str:
        return _clean_text(v, info.field_name)

    @field_validator("styles", "subseed_strength", "restore_faces", "tiling", "script_name", "alwayson_scripts",
                     "resize_mode", check_fields=False)
    @classmethod
    def _unsupported(cls, v: Any, info) -> Any:
        """Features sdlab lacks: accepted at their off value (A1111 clients send them all), else 422."""
        if v:
            raise ValueError(f"{info.field_name} is not supported by this server (sdlab); leave it unset")
        return v

    def job_fields(self) -> dict:
        """The studio job's fields (sdlab names) for this request."""
        sampler, schedule = resolve_sampler(self.sampler_name or self.sampler_index or "Euler", self.scheduler)
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "steps": self.steps,
                "cfg_scale": self.cfg_scale, "sampler": sampler, "schedule": schedule,
                "seed": None if self.seed == -1 else self.seed,
                "width": self.width, "height": self.height, "batch_size": self.batch_size,
                "batch_count": self.n_iter}


class A1111Txt2Img(A1111Request):
    """POST /sdapi/v1/txt2img (A1111's StableDiffusionTxt2ImgProcessingAPI), with its hires fix
    (enable_hr, hr_scale, hr_upscaler, hr_second_pass_steps, denoising_strength; sdlab.sampling.hires)."""

    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=4.0)
    hr_upscaler: Optional[str] = Field(None, max_length=100, description="Latent, Lanczos, ... (default Latent)")
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS, description="0: the same as steps")
    denoising_strength: Optional[float] = Field(None, ge=0.0, le=1.0, description="the hires pass's (default 0.7)")
    hr_resize_x: int = Field(0, description="must be 0: give hr_scale")
    hr_resize_y: int = Field(0, description="must be 0: give hr_scale")
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="must be empty: the pass uses prompt")
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="must be empty")
    hr_sampler_name: Optional[str] = Field(None, max_length=100, description="unset or \"Use same sampler\": "
                                           "the pass uses sampler_name; on the first pass's schedule")
    hr_checkpoint_name: Optional[str] = Field(None, max_length=255, description="unset: one model per server")

    @field_validator("hr_resize_x", "hr_resize_y", "hr_prompt", "hr_negative_prompt", "hr_checkpoint_name")
    @classmethod
    def _scale_only(cls, v: Any, info) -> Any:
        if v:
            raise ValueError(f"{info.field_name} is not supported by this server (sdlab): the hires pass takes "
                             "hr_scale and the first pass's prompts and model")
        return v

    def job_fields(self) -> dict:
        fields = super().job_fields()
        if self.enable_hr:
            from ..sampling.hires import upscaler_named

            fields.update(hires_scale=self.hr_scale, hires_upscaler=upscaler_named(self.hr_upscaler or "Latent"),
                          hires_steps=self.hr_second_pass_steps)
            if self.denoising_strength is not None:
                fields["hires_strength"] = self.denoising_strength
            if self.hr_sampler_name not in (None, "", SAME_SAMPLER):
                fields["hires_sampler"] = self.hires_sampler(fields["schedule"])
        return fields

    def hires_sampler(self, schedule: str) -> str:
        """sdlab's name of hr_sampler_name, run on the first pass's schedule (sdlab has no hr_scheduler)."""
        name, own = resolve_sampler(self.hr_sampler_name, self.scheduler)
        if own not in ("Automatic", schedule):
            raise ConfigError(f"hr_sampler_name {self.hr_sampler_name!r} on the {own} schedule: this server runs the "
                              f"hires pass on the first pass's schedule ({schedule}); use a sampler without one")
        return name


class A1111Img2Img(A1111Request):
    """POST /sdapi/v1/img2img (A1111's StableDiffusionImg2ImgProcessingAPI): SDEdit from one image."""

    init_images: list[str] = Field(min_length=1, max_length=1, description="one image: base64 or a data URL")
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    resize_mode: int = Field(0, description="0 (just resize) only")
    mask: Optional[str] = Field(None, description="inpainting: white = repaint (base64 or a data URL)")
    mask_blur: Optional[int] = Field(None, ge=0, le=64, description="default: mask_blur_x")
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64, description="must equal mask_blur_x: sdlab blurs both ways alike")
    inpainting_fill: int = Field(0, ge=0, le=len(MASKED_CONTENT) - 1,
                                 description="masked content: " + ", ".join(f"{i} {n}" for i, n in
                                                                            enumerate(MASKED_CONTENT)))
    inpaint_full_res: bool = Field(True, description="only masked: a crop around the mask at the model's size")
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1: repaint the black area")

    def inpaint_fields(self) -> dict:
        """The inpaint job's options (sdlab.inpaint.InpaintConfig) for A1111's fields."""
        blur = self.mask_blur_x if self.mask_blur is None else self.mask_blur
        if self.mask_blur is None and self.mask_blur_y != self.mask_blur_x:
            raise ConfigError(f"mask_blur_x ({self.mask_blur_x}) and mask_blur_y ({self.mask_blur_y}) must be "
                              "equal on this server (sdlab blurs the mask alike both ways); or give mask_blur")
        return {"mask_blur": blur, "masked_content": MASKED_CONTENT[self.inpainting_fill],
                "only_masked": self.inpaint_full_res, "padding": self.inpaint_full_res_padding,
                "invert_mask": bool(self.inpainting_mask_invert)}
    include_init_images: bool = False


class ImagesResponse(BaseModel):
    images: list[str] = Field(description="PNG files in base64, each with its A1111 `parameters` chunk")
    parameters: dict[str, Any]
    info: str = Field(description="JSON: seed, all_seeds, infotexts, ... as A1111's Processed.js()")


class ProgressResponse(BaseModel):
    progress: float = Field(description="0 to 1")
    eta_relative: float = Field(description="seconds left (estimate)")
    state: dict[str, Any]
    current_image: Optional[str] = Field(None, description="the running job's preview, PNG in base64")
    textinfo: Optional[str] = None


def decode_image(text: str, field: str = "init_images") -> bytes:
    """Bytes of a base64 image, raw or as a data URL (A1111 accepts both); 422 if it is neither.
    Size, format and pixel count are checked where the bytes are stored (files.save_upload)."""
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise HTTPException(422, f"{field}: a data URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"{field}: not base64 image data (raw base64 or a data:image/...;base64, "
                                 "URL; URLs to fetch are not accepted)") from None


def a1111_router(job_params: Callable[[BaseModel, ServerSettings], dict]) -> APIRouter:
    """The /sdapi/v1 routes; `job_params(request_model, settings)` checks a studio request
    against the server's limits and returns the job's params (the studio's own check)."""
    router = APIRouter(prefix=PREFIX, tags=["AUTOMATIC1111 API"])
    options = {"sd_vae": "Automatic", "CLIP_stop_at_last_layers": 1}

    def prepare(kind: str, body: A1111Request, settings: ServerSettings, pipe) -> dict:
        """The job's params (blocking work: the model hash, base64, storing the upload)."""
        fields = body.job_fields()
        fields["vae"] = _job_vae(body.override_settings, options, settings, pipe)
        fields["clip_skip"] = _clip_skip(body.override_settings.get("CLIP_stop_at_last_layers",
                                                                   options["CLIP_stop_at_last_layers"]))
        if kind in ("img2img", "inpaint"):
            fields["strength"] = body.denoising_strength
        if kind == "inpaint":
            fields.update(body.inpaint_fields())
        params = job_params(_studio_request(STUDIO_MODELS[kind], fields), settings)
        if kind in ("img2img", "inpaint"):
            data = decode_image(body.init_images[0])
            params["init_image"] = save_upload(data, settings.upload_dir, settings.max_upload_bytes,
                                               settings.max_upload_pixels)
        if kind == "inpaint":
            params["mask_image"] = save_upload(decode_image(body.mask, "mask"), settings.upload_dir,
                                               settings.max_upload_bytes, settings.max_upload_pixels)
            inpaint_inputs(params, settings)          # the mask fits the image and is not empty, else 422
        return params

    async def run(kind: str, body: A1111Request, request: Request) -> dict:
        settings, queue, pipe = request.app.state.settings, request.app.state.queue, _pipe(request)
        params = await asyncio.to_thread(prepare, kind, body, settings, pipe)
        job = await _wait(request, queue.submit(kind, params)["id"])
        return await asyncio.to_thread(_reply, job, body, settings, pipe)

    @router.post("/txt2img", response_model=ImagesResponse)
    async def txt2img(body: A1111Txt2Img, request: Request) -> dict:
        """txt2img as A1111 runs it: blocks until the images are made."""
        return await run("txt2img", body, request)

    @router.post("/img2img", response_model=ImagesResponse)
    async def img2img(body: A1111Img2Img, request: Request) -> dict:
        """img2img (SDEdit) from init_images[0], noised to denoising_strength; with a mask, inpainting
        (the mask's white area repainted, the rest kept); blocks until done."""
        return await run("inpaint" if body.mask else "img2img", body, request)

    @router.get("/progress", response_model=ProgressResponse)
    def progress(request: Request, skip_current_image: bool = False) -> dict:
        """The running job's progress (any kind: the queue is shared with the studio)."""
        return _progress(_running(request), skip_current_image)

    @router.post("/interrupt")
    def interrupt(request: Request) -> dict:
        """Cancel the running job(s); queued jobs still run."""
        queue = request.app.state.queue
        for job in queue.store.list("running", limit=100):
            queue.cancel(job["id"])
        return {}

    @router.get("/samplers")
    def list_samplers() -> list[dict]:
        """Samplers as A1111 >= 1.9 lists them: the schedule apart (scheduler), its default as an option."""
        return [{"name": n, "aliases": sampler_aliases(n),
                 "options": {"scheduler": DEFAULT_SCHEDULER[n]} if n in DEFAULT_SCHEDULER else {}}
                for n in sampler_names() if not n.endswith(" Karras")]

    @router.get("/schedulers")
    def list_schedulers() -> list[dict]:
        """A1111's schedulers that sdlab has (any of them works on any model)."""
        rho = {"karras": 7.0, "polyexponential": 1.0}    # A1111's default_rho
        return [{"name": k, "label": v, "aliases": None, "default_rho": rho.get(k, -1.0),
                 "need_inner_model": k in ("uniform", "sgm_uniform", "ddim")} for k, v in SCHEDULE_LABELS.items()]

    @router.get("/sd-models")
    def sd_models(request: Request) -> list[dict]:
        """The one model this server runs (switching models means restarting with --model)."""
        c = _pipe(request).c
        return [{"title": _title(c), "model_name": c.name, "hash": c.model_hash, "sha256": None,
                 "filename": str(c.source), "config": None}]

    @router.get("/scripts")
    def scripts() -> dict:
        return {"txt2img": [], "img2img": []}

    @router.get("/options")
    def get_options(request: Request) -> dict:
        """The A1111 settings this server has: the model, the VAE (settable) and fixed ones."""
        return {"sd_model_checkpoint": _title(_pipe(request).c), "sd_vae": options["sd_vae"],
                "samples_format": "png", "CLIP_stop_at_last_layers": options["CLIP_stop_at_last_layers"],
                "return_grid": False}

    @router.post("/options")
    def set_options(body: dict[str, Any], request: Request) -> None:
        """Set sd_vae (Automatic, None or a --vae-dir name); sd_model_checkpoint must name the
        loaded model; other A1111 settings are ignored, as A1111 ignores unknown ones."""
        settings, pipe = request.app.state.settings, _pipe(request)
        if "sd_model_checkpoint" in body:
            _check_checkpoint(body["sd_model_checkpoint"], pipe)
        if "sd_vae" in body:
            _vae_name(body["sd_vae"], settings)
            options["sd_vae"] = body["sd_vae"]
        if "CLIP_stop_at_last_layers" in body:
            options["CLIP_stop_at_last_layers"] = _clip_skip(body["CLIP_stop_at_last_layers"])
        return None

    return router


def _pipe(request: Request):
    return next(iter(request.app.state.queue.pipes.values()))


def _title(c) -> str:
    return f"{c.name} [{c.model_hash}]"


def _check_checkpoint(value: Any, pipe) -> None:
    c = pipe.c
    if value not in (_title(c), c.name, c.model_hash, c.source.name, str(c.source)):
        raise ConfigError(f"sd_model_checkpoint: this server runs only {_title(c)} (restart sdlab serve --model "
                          "to change models)")


def _vae_name(value: Any, settings: ServerSettings) -> Optional[str]:
    """The job's `vae` for A1111's sd_vae value (None: the model's own)."""
    if value is None or value in NO_VAE:
        return None
    offered = vae_names(settings.vae_dirs)
    if not isinstance(value, str) or value not in offered:
        raise ConfigError(f"sd_vae must be {', '.join(NO_VAE)} or a VAE this server offers "
                          f"({', '.join(offered) or 'none: sdlab serve --vae-dir'})")
    return value


def _clip_skip(value: Any) -> int:
    """A1111's CLIP_stop_at_last_layers as the job's clip_skip (1 .. 12, as A1111's slider)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
        raise ConfigError(f"CLIP_stop_at_last_layers must be an integer from 1 to 12, got {value!r}")
    return value


def _job_vae(override: dict, options: dict, settings: ServerSettings, pipe) -> Optional[str]:
    if "sd_model_checkpoint" in override:
        _check_checkpoint(override["sd_model_checkpoint"], pipe)
    return _vae_name(override.get("sd_vae", options["sd_vae"]), settings)


def _studio_request(model: type[BaseModel], fields: dict) -> BaseModel:
    try:
        return model.model_validate(fields)
    except ValidationError as err:  # the A1111 models check the same bounds; this is a safety net
        first = err.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


async def _wait(request: Request, job_id: str) -> dict:
    """Poll the job until it ends; a client that hangs up cancels it."""
    queue = request.app.state.queue
    while (job := queue.store.get(job_id))["state"] not in TERMINAL:
        if await request.is_disconnected():
            queue.cancel(job_id)
        await asyncio.sleep(POLL_SECONDS)
    return job


def _reply(job: dict, body: A1111Request, settings: ServerSettings, pipe) -> dict:
    """A1111's reply: base64 PNGs, the request as `parameters`, Processed.js() as `info`."""
    if job["state"] == "failed":
        raise HTTPException(500, f"the job failed: {job['error']}")
    made = (job["result"] or {}).get("images", []) if job["state"] == "done" else []
    images = [_b64_file(settings, im["url"]) for im in made] if body.send_images else []
    parameters = body.model_dump()
    if isinstance(body, A1111Img2Img) and not body.include_init_images:
        parameters["init_images"] = parameters["mask"] = None       # as A1111: the uploads are not echoed
    return {"images": images, "parameters": parameters, "info": json.dumps(_info(job, made, pipe))}


def _b64_file(settings: ServerSettings, url: str) -> str:
    path = safe_output_path(settings.output_dir, url.removeprefix("/files/"))
    if path is None:
        raise HTTPException(500, "an image of the job is gone from the output folder")
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _info(job: dict, made: list[dict], pipe) -> dict:
    """A1111's Processed.js(); is_using_inpainting_conditioning is true for every job of an inpainting
    (concat) UNet, as A1111 sets it from the model's conditioning_key in txt2img and img2img alike."""
    from ..sampling.inpaint import is_inpainting_unet

    p = job["params"]
    seeds = [p["seed"] + i for i in range(p["batch_size"] * p["batch_count"])]
    infotexts = [im["infotext"] for im in made]
    params = parse_infotext(infotexts[0])[2] if infotexts else {}
    n = len(seeds)
    hires_strength = p.get("hires_strength") if p.get("hires_scale", 1) > 1 else None
    return {"prompt": p["prompt"], "all_prompts": [p["prompt"]] * n, "negative_prompt": p["negative_prompt"],
            "all_negative_prompts": [p["negative_prompt"]] * n, "seed": seeds[0], "all_seeds": seeds,
            "subseed": -1, "all_subseeds": [-1] * n, "subseed_strength": 0.0,
            "width": p["width"] or pipe.native_size, "height": p["height"] or pipe.native_size,
            "sampler_name": p["sampler"], "cfg_scale": p["cfg_scale"], "steps": p["steps"],
            "batch_size": p["batch_size"], "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": pipe.c.name, "sd_model_hash": pipe.c.model_hash, "sd_vae_name": params.get("VAE"),
            "sd_vae_hash": params.get("VAE hash"), "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": p.get("strength", hires_strength), "extra_generation_params": {},
            "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
            "job_timestamp": _timestamp(job["created"]), "clip_skip": p.get("clip_skip", 1),
            "is_using_inpainting_conditioning": is_inpainting_unet(pipe.c.unet), "version": __version__, "job_id": job["id"],
            "state": job["state"]}


def _timestamp(t: Optional[float]) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(t or time.time()))


def _running(request: Request) -> Optional[dict]:
    queue = request.app.state.queue
    running = queue.store.list("running", limit=100)
    return queue.snapshot(running[-1]["id"]) if running else None   # the oldest


def _progress(job: Optional[dict], skip_image: bool) -> dict:
    """A1111's /progress for a job snapshot (None: idle)."""
    if job is None or job["state"] != "running":
        state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                 "job_timestamp": _timestamp(None), "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    batches = max(1, int(job["params"].get("batch_count", 1)))
    per = job["total"] // batches
    job_no = min(job["step"] // per, batches - 1) if per else 0
    state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": job["kind"],
             "job_id": job["id"], "job_count": batches, "job_timestamp": _timestamp(job["created"]),
             "job_no": job_no, "sampling_step": job["step"] - job_no * per, "sampling_steps": per}
    done, elapsed = job["progress"], time.time() - (job["started"] or time.time())
    preview = job["preview"]
    image = preview.partition(",")[2] if preview and not skip_image else None
    return {"progress": done, "eta_relative": elapsed * (1 - done) / done if done > 0 else 0.0, "state": state,
            "current_image": image, "textinfo": None}
