"""The FastAPI app: `create_app(settings)` wires the job queue, the API, the files and the page."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Optional

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..config import GenerationConfig
from ..errors import ConfigError
from ..sampling import sampler_names
from ..io.paths import offered_names
from ..models.vae_file import find_vae, vae_names, weights_entry
from ..sampling.xyz_axes import axis_names
from ..text.extra_networks import find_lora, lora_names, tags_of_prompts
from . import attention_jobs, merge_jobs, runners, train_jobs  # noqa: F401  (register the job kinds)
from .a1111 import a1111_router
from .auth import AccessMiddleware
from .body import BodyGuardMiddleware, public_errors
from .files import UploadError, clean_server_temps, gallery, safe_output_path, save_upload
from .headers import SecurityHeadersMiddleware
from .jobs import RUNNERS, JobQueue
from .lock import QueueLock
from .schemas import (MAX_TRAIN_IMAGES, AttendRequest, ControlRequest, EditRequest, Gallery, GenerateRequest,
                      GridRequest, Img2ImgRequest, InpaintRequest, JobList, JobOut, JobState, MergeRequest, Options,
                      SamplingRequest, TrainRequest)
from .settings import ServerSettings
from .store import REQUEUEABLE, TERMINAL, JobStore, QueueFull

STATIC = Path(__file__).parent / "static"
BODY_SLACK = 2**20  # multipart overhead and form fields beyond the image bytes
BASE64_JSON_PREFIXES = ("/sdapi/",)  # A1111's API sends images as base64 inside JSON


def _load_pipeline(settings: ServerSettings):
    def load(device: Optional[str]):
        from ..pipeline import Pipeline

        return Pipeline.load(settings.model, dtype=settings.dtype, device=device, vae=settings.vae)
    return load


def create_app(settings: ServerSettings, load_pipeline=None, queue_lock: Optional[QueueLock] = None,
               job_queue=None) -> FastAPI:
    """The sdlab studio app; the queue starts (and the model loads) when the app starts up.
    The queue's lock (`queue_lock`, else taken at startup: ServerBusy if another server holds
    it) is held until the app stops. `job_queue(settings, load_pipeline)`: builds the JobQueue
    instead, over a store of its own that several apps share (Ray Serve's replicas,
    sdlab.server.ray_serve); no lock is taken then."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        lock = (queue_lock or QueueLock.acquire(settings)) if job_queue is None else None
        try:
            await asyncio.to_thread(clean_server_temps, settings.output_dir, settings.upload_dir)
            load = load_pipeline or _load_pipeline(settings)
            queue = (JobQueue(settings, JobStore(settings.db_path), load) if job_queue is None
                     else job_queue(settings, load))
            try:
                await asyncio.to_thread(queue.start)
                app.state.queue = queue
                yield
            finally:
                await asyncio.to_thread(queue.stop)
                queue.store.close()
        finally:
            if lock is not None:
                lock.release()

    app = FastAPI(title="sdlab studio", version=__version__, lifespan=lifespan,
                  description="txt2img, img2img, attention-map, prompt-to-prompt and training jobs in a "
                              "persistent queue, progress over SSE, a gallery.")
    app.state.settings = settings
    app.add_middleware(BodyGuardMiddleware, limit_for=_body_limits(settings))
    app.add_middleware(AccessMiddleware, token=settings.token)  # checked before the body is read
    app.add_middleware(SecurityHeadersMiddleware)               # outermost: on every response
    _errors(app)
    _job_routes(app, settings)
    app.include_router(a1111_router(_job_params))  # AUTOMATIC1111's /sdapi/v1
    _file_routes(app, settings)
    return app


def _body_limits(settings: ServerSettings):
    """Request body limits: uploads (multipart, base64 JSON) get the upload limit, others max_json_bytes."""
    upload = settings.max_upload_bytes + BODY_SLACK

    def limit_for(path: str, content_type: str) -> int:
        if content_type.lower().startswith("multipart/"):
            return upload
        if path.startswith(BASE64_JSON_PREFIXES):
            return upload * 4 // 3 + BODY_SLACK
        return settings.max_json_bytes
    return limit_for


def _errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):  # FastAPI's own handler echoes the input
        return JSONResponse({"detail": public_errors(exc.errors())}, status_code=422)

    @app.exception_handler(QueueFull)
    async def _full(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(UploadError)
    async def _upload(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(ConfigError)
    async def _config(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=422)


def _queue(request: Request) -> JobQueue:
    return request.app.state.queue


def _get_job(request: Request, job_id: str) -> dict:
    job = _queue(request).snapshot(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


def _job_params(body: SamplingRequest, settings: ServerSettings) -> dict:
    """Stored params: the request with a concrete seed; server limits checked (422)."""
    params = body.model_dump()
    for side in ("width", "height"):
        if params[side] is not None and params[side] > settings.max_side:
            raise ConfigError(f"{side} must be at most {settings.max_side} on this server, got {params[side]}")
    images = params.get("batch_size", 1) * params.get("batch_count", 1)
    if images > settings.max_images:
        raise ConfigError(f"batch_size * batch_count must be at most {settings.max_images}, got {images}")
    if params["seed"] is None:
        params["seed"] = random.randrange(2**32)
    if params.get("trained"):
        from .train_jobs import trained_result

        trained_result(settings.output_dir, params["trained"])
    _check_lora_tags(params, settings)
    if params.get("vae"):
        find_vae(params["vae"], settings.vae_dirs)
    return params


def _check_lora_tags(params: dict, settings: ServerSettings) -> None:
    """Every `<lora:NAME:W>` tag of the job's prompts names a file in --lora-dir (422 if not)."""
    prompts = [params.get(k) for k in ("prompt", "source", "target") if params.get(k)]
    for name, _ in tags_of_prompts(prompts):
        find_lora(name, list(settings.lora_dirs))


def _job_routes(app: FastAPI, settings: ServerSettings) -> None:
    @app.get("/api/health")
    def health(request: Request) -> dict:
        q = _queue(request)
        pipe = next(iter(q.pipes.values()), None)
        return {"status": "ok", "version": __version__, "model": pipe.c.name if pipe else None,
                "model_hash": getattr(pipe.c, "model_hash", None) if pipe else None,   # checked by generate --server
                "workers": len(q.pipes), "jobs": q.store.counts(), "kinds": sorted(RUNNERS)}

    @app.get("/api/samplers")
    def samplers() -> list[str]:
        return sampler_names()

    @app.get("/api/options", response_model=Options)
    def options(request: Request) -> dict:
        pipe = next(iter(_queue(request).pipes.values()), None)
        return {"samplers": sampler_names(), "default_sampler": GenerationConfig.sampler, "model": pipe.c.name if pipe else None,
                "native_size": pipe.native_size if pipe else None,
                "default_cfg_scale": pipe.cfg_scale_for(None) if pipe else None,
                "loras": lora_names(settings.lora_dirs),
                "vaes": vae_names(settings.vae_dirs), "controlnets": offered_names(settings.controlnet_dirs, weights_entry),
                "grid_axes": axis_names(), "merge_models": merge_jobs.merge_names(settings),
                "limits": {"max_side": settings.max_side, "max_images": settings.max_images,
                           "max_upload_bytes": settings.max_upload_bytes, "max_queue": settings.max_queue}}

    @app.post("/api/generate", status_code=202, response_model=JobOut)
    def generate(body: GenerateRequest, request: Request) -> dict:
        job = _queue(request).submit("txt2img", _job_params(body, settings))
        return _get_job(request, job["id"])

    @app.post("/api/img2img", status_code=202, response_model=JobOut)
    async def img2img(request: Request, form: Annotated[Img2ImgRequest, Form()],
                      image: Annotated[UploadFile, File(description="PNG, JPEG, WebP, BMP or GIF")]) -> dict:
        params = _job_params(form, settings)
        data = await image.read(settings.max_upload_bytes + 1)
        params["init_image"] = await asyncio.to_thread(save_upload, data, settings.upload_dir,
                                                       settings.max_upload_bytes, settings.max_upload_pixels)
        job = _queue(request).submit("img2img", params)
        return _get_job(request, job["id"])

    @app.post("/api/inpaint", status_code=202, response_model=JobOut)
    async def inpaint(request: Request, form: Annotated[InpaintRequest, Form()],
                      image: Annotated[UploadFile, File(description="PNG, JPEG, WebP, BMP or GIF")],
                      mask: Annotated[Optional[UploadFile], File(description="white = repaint (any size of the "
                                                                 "image's shape; transparency: its alpha); "
                                                                 "not with expand")] = None) -> dict:
        """Inpainting (the mask's white area repainted) or, with `expand`, outpainting."""
        params = _job_params(form, settings)
        for field, upload in (("init_image", image), ("mask_image", mask)):
            if upload is not None and not (field == "mask_image" and params.get("expand")):
                data = await upload.read(settings.max_upload_bytes + 1)
                params[field] = await asyncio.to_thread(save_upload, data, settings.upload_dir,
                                                        settings.max_upload_bytes, settings.max_upload_pixels)
        await asyncio.to_thread(runners.inpaint_inputs, params, settings)      # the mask fits the image: else 422
        job = _queue(request).submit("inpaint", params)
        return _get_job(request, job["id"])

    @app.post("/api/control", status_code=202, response_model=JobOut)
    async def control(request: Request, form: Annotated[ControlRequest, Form()],
                      control_image: Annotated[UploadFile, File(description="the control image (PNG, JPEG, ...)")]
                      ) -> dict:
        """txt2img through a ControlNet of --controlnet-dir, steered by the uploaded control image."""
        params = _job_params(form, settings)
        data = await control_image.read(settings.max_upload_bytes + 1)
        params["control_image"] = await asyncio.to_thread(save_upload, data, settings.upload_dir,
                                                          settings.max_upload_bytes, settings.max_upload_pixels)
        await asyncio.to_thread(runners.control_units, params, settings)     # the net exists, values fit: else 422
        job = _queue(request).submit("txt2img", params)
        return _get_job(request, job["id"])

    @app.post("/api/grid", status_code=202, response_model=JobOut)
    def grid(body: GridRequest, request: Request) -> dict:
        """An X/Y/Z plot: one image per combination of the axes' values and the labelled grid."""
        params = _job_params(body, settings)
        runners.grid_axes(params, settings)         # bad axes and values: 422 before any sampling
        job = _queue(request).submit("grid", params)
        return _get_job(request, job["id"])

    @app.post("/api/merge", status_code=202, response_model=JobOut)
    def merge(body: MergeRequest, request: Request) -> dict:
        """Merge two models or LoRA files of --merge-dir (and C for add-difference) into OUTPUT_DIR/models."""
        params = body.model_dump()
        merge_jobs.merge_inputs(params, settings)   # names offered, output new: else 422
        job = _queue(request).submit("merge", params)
        return _get_job(request, job["id"])

    @app.post("/api/attend", status_code=202, response_model=JobOut)
    def attend(body: AttendRequest, request: Request) -> dict:
        """Cross-attention maps: the image, one overlay per prompt token and a labelled grid."""
        job = _queue(request).submit("attend", _job_params(body, settings))
        return _get_job(request, job["id"])

    @app.post("/api/edit", status_code=202, response_model=JobOut,
              responses={400: {"description": "the edit does not fit the prompts (a word not in them, "
                                              "token counts that differ for replace)"}})
    def edit(body: EditRequest, request: Request) -> dict:
        """Prompt-to-prompt edit: the source and the edited image from one seed."""
        params = _job_params(body, settings)
        pipe = next(iter(_queue(request).pipes.values()))
        try:
            attention_jobs.check_edit(pipe, params)
        except ConfigError as err:
            raise HTTPException(400, str(err)) from None
        job = _queue(request).submit("edit", params)
        return _get_job(request, job["id"])

    @app.post("/api/train", status_code=202, response_model=JobOut)
    async def train(request: Request, form: Annotated[TrainRequest, Form()],
                    images: Annotated[list[UploadFile], File(description="1 to 16 training images")]) -> dict:
        """A short LoRA / textual-inversion run on the uploaded images; `losses` grows as it trains."""
        if not 1 <= len(images) <= MAX_TRAIN_IMAGES:
            raise ConfigError(f"images: give 1 to {MAX_TRAIN_IMAGES} training images, got {len(images)}")
        params = {**form.model_dump(), "data": f"train-{uuid.uuid4().hex}"}
        folder = settings.upload_dir / params["data"]
        try:
            for image in images:
                data = await image.read(settings.max_upload_bytes + 1)
                await asyncio.to_thread(save_upload, data, folder, settings.max_upload_bytes,
                                        settings.max_upload_pixels)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = _queue(request).submit("train", params)
        return _get_job(request, job["id"])

    @app.get("/api/jobs", response_model=JobList)
    def jobs(request: Request, state: Optional[JobState] = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
             offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> dict:
        q = _queue(request)
        listed = [q.snapshot(j["id"]) for j in q.store.list(state, limit, offset)]
        return {"jobs": [j for j in listed if j is not None], "counts": q.store.counts()}

    @app.get("/api/jobs/{job_id}", response_model=JobOut)
    def job(job_id: str, request: Request) -> dict:
        return _get_job(request, job_id)

    @app.post("/api/jobs/{job_id}/cancel", response_model=JobOut)
    def cancel(job_id: str, request: Request) -> dict:
        job = _get_job(request, job_id)
        if job["state"] in TERMINAL:
            raise HTTPException(409, f"job {job_id} is {job['state']}: nothing to cancel")
        _queue(request).cancel(job_id)
        return _get_job(request, job_id)

    @app.post("/api/jobs/{job_id}/resume", response_model=JobOut)
    def resume(job_id: str, request: Request) -> dict:
        job = _get_job(request, job_id)
        if job["state"] not in REQUEUEABLE or not _queue(request).resume(job_id):
            raise HTTPException(409, f"job {job_id} is {job['state']}; only {', '.join(sorted(REQUEUEABLE))} "
                                     "jobs can be resumed")
        return _get_job(request, job_id)

    @app.get("/api/jobs/{job_id}/events", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def events(job_id: str, request: Request):
        """Server-sent events: `progress` while the job waits or runs, one `end` when it stops."""
        _get_job(request, job_id)
        return StreamingResponse(_event_stream(request, job_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(request: Request, job_id: str, poll: float = 0.1, heartbeat: float = 10.0):
    queue, last, last_preview, quiet = _queue(request), None, None, 0.0
    while not await request.is_disconnected():
        job = queue.snapshot(job_id)
        if job is None:
            return
        key = (job["state"], job["step"], job["total"], job["preview"])
        if key != last:
            last, quiet = key, 0.0
            if job["preview"] == last_preview:
                job["preview"] = None  # send each preview once
            else:
                last_preview = job["preview"]
            end = job["state"] in TERMINAL
            yield f"event: {'end' if end else 'progress'}\ndata: {json.dumps(job)}\n\n"
            if end:
                return
        elif quiet >= heartbeat:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll)
        quiet += poll


def _file_routes(app: FastAPI, settings: ServerSettings) -> None:
    @app.get("/api/gallery", response_model=Gallery)
    def list_gallery(limit: Annotated[int, Query(ge=1, le=500)] = 60,
                     offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> dict:
        items, total = gallery(settings.output_dir, limit, offset)
        return {"items": items, "total": total}

    @app.get("/files/{path:path}", response_class=FileResponse)
    def files(path: str, download: bool = False):
        found = safe_output_path(settings.output_dir, path)
        if found is None:
            raise HTTPException(404, "not found")
        return FileResponse(found, filename=found.name if download else None)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
