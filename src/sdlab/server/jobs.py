"""The job queue: a registry of job kinds, one worker thread per device, live progress and previews.

A job kind is one function `runner(ctx) -> result dict` registered with `@register_kind(name)`;
the queue knows nothing else about it. Runners report progress through `ctx.callback()` (the
sdlab.callbacks contract) and stop when `ctx.cancel` is set.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..callbacks import CancelToken, StepCallback, StepEvent
from ..errors import Cancelled, ConfigError, SdlabError
from ..models.vae_file import find_vae
from .settings import ServerSettings
from .store import JobStore

log = logging.getLogger("sdlab.server")
RUNNERS: dict[str, Callable[["JobContext"], dict]] = {}


def register_kind(name: str):
    """Decorator: make `fn(ctx) -> dict` the runner of job kind `name`."""
    def deco(fn):
        RUNNERS[name] = fn
        return fn
    return deco


@dataclass
class Live:
    """What a running job shows between database writes: steps and the latest preview."""

    step: int = 0
    total: int = 0
    preview: Optional[str] = None   # data URL
    metrics: dict = field(default_factory=dict)     # the latest StepEvent.metrics (training: loss, lr)
    losses: list = field(default_factory=list)      # every reported loss, in step order


@dataclass
class JobContext:
    """What a runner gets: the job, a loaded pipeline, settings, cancel token and progress hooks."""

    job: dict
    pipe: Any
    settings: ServerSettings
    cancel: CancelToken
    live: Live
    notify: Callable[[], None]
    save_lock: threading.Lock
    _next_preview: float = field(default=0.0)

    @property
    def params(self) -> dict:
        return self.job["params"]

    def callback(self, batches: int = 1) -> StepCallback:
        """A StepCallback that counts steps over `batches` loops and decodes a preview at most
        every `settings.preview_interval` seconds, and at most a quarter of the time (the VAE
        decode of a large model is not free)."""
        from .preview import preview_data_url

        def on_step(event: StepEvent) -> None:
            live = self.live
            live.total = max(live.total, event.total * batches)
            live.step = min(live.step + 1, live.total)
            if event.metrics:
                live.metrics = dict(event.metrics)
                if "loss" in event.metrics:
                    live.losses.append(float(event.metrics["loss"]))
            now = time.monotonic()
            if event.denoised is not None and now >= self._next_preview:
                live.preview = preview_data_url(self.pipe, event.denoised)
                cost = time.monotonic() - now
                self._next_preview = now + max(self.settings.preview_interval, 3 * cost)
            self.notify()

        return on_step


class JobQueue:
    """Persistent queue (JobStore) plus worker threads that run jobs with a loaded Pipeline."""

    def __init__(self, settings: ServerSettings, store: JobStore, load_pipeline: Callable[[Optional[str]], Any]):
        self.settings, self.store, self._load = settings, store, load_pipeline
        self._cond = threading.Condition()
        self._live: dict[str, Live] = {}
        self._tokens: dict[str, CancelToken] = {}
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.save_lock = threading.Lock()
        self.pipes: dict[Optional[str], Any] = {}

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Load one pipeline per device (errors surface here) and start one worker per device."""
        for device in self.settings.devices:
            self.pipes[device] = self._load(device)
            self.pipes[device].lora_dirs = list(self.settings.lora_dirs)
        for device in self.settings.devices:
            t = threading.Thread(target=self._work, args=(device,), name=f"sdlab-worker-{device}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers; a job still running is cancelled and marked interrupted (resumable)."""
        with self._cond:
            self._stopping = True
            for token in self._tokens.values():
                token.cancel()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- requests ------------------------------------------------------------------------------
    def submit(self, kind: str, params: dict) -> dict:
        if kind not in RUNNERS:
            raise ConfigError(f"unknown job kind {kind!r}; known: {', '.join(sorted(RUNNERS))}")
        job = self.store.add(kind, params, max_queued=self.settings.max_queue)
        self.notify()
        return job

    def cancel(self, job_id: str) -> Optional[dict]:
        """Cancel a queued or running job; returns the job (None if unknown)."""
        if self.store.cancel_queued(job_id):
            self.notify()
        else:
            with self._cond:
                token = self._tokens.get(job_id)
            if token is not None:
                token.cancel()
        return self.store.get(job_id)

    def resume(self, job_id: str) -> bool:
        ok = self.store.requeue(job_id, max_queued=self.settings.max_queue)
        self.notify()
        return ok

    def snapshot(self, job_id: str) -> Optional[dict]:
        """The stored job plus live step/total/preview while it runs."""
        job = self.store.get(job_id)
        if job is None:
            return None
        live = self._live.get(job_id)
        job["step"], job["total"] = (live.step, live.total) if live else (0, 0)
        if job["state"] == "done":
            job["step"] = job["total"] = max(job["total"], 1)
        job["progress"] = job["step"] / job["total"] if job["total"] else (1.0 if job["state"] == "done" else 0.0)
        job["preview"] = live.preview if live else None
        job["metrics"], job["losses"] = (dict(live.metrics), list(live.losses)) if live else ({}, [])
        return job

    # --- the worker ----------------------------------------------------------------------------
    def _next(self) -> Optional[dict]:
        with self._cond:
            while not self._stopping:
                job = self.store.claim()
                if job is not None:
                    self._tokens[job["id"]] = CancelToken()
                    self._live[job["id"]] = Live()
                    return job
                self._cond.wait(1.0)
        return None

    def _work(self, device: Optional[str]) -> None:
        pipe = self.pipes[device]
        while (job := self._next()) is not None:
            state, result, error = self._run(job, pipe)
            self.store.finish(job["id"], state, result=result, error=error)
            with self._cond:
                self._tokens.pop(job["id"], None)
                live = self._live.pop(job["id"], None)
                if live is not None:  # keep the last step and preview for late readers
                    self._live[job["id"]] = live
                self._trim_live()
            self.notify()

    def _run(self, job: dict, pipe) -> tuple[str, Optional[dict], Optional[str]]:
        ctx = JobContext(job, pipe, self.settings, self._tokens[job["id"]], self._live[job["id"]], self.notify,
                         self.save_lock)
        runner = RUNNERS.get(job["kind"])
        if runner is None:  # e.g. a database written by a version with more kinds
            return "failed", None, f"unknown job kind {job['kind']!r}; this server runs {', '.join(sorted(RUNNERS))}"
        vae = job["params"].get("vae")          # a job's pick of the server's VAEs (--vae-dir)
        try:
            if vae:
                pipe.set_vae(find_vae(vae, self.settings.vae_dirs))
            return "done", runner(ctx), None
        except Cancelled:
            return ("interrupted", None, "the server stopped while this job ran") if self._stopping \
                else ("cancelled", None, "cancelled by request")
        except SdlabError as err:
            return "failed", None, str(err)
        except Exception as err:  # a bug, not bad input: keep the server alive, log the trace
            log.exception("job %s failed", job["id"])
            return "failed", None, f"internal error: {type(err).__name__}: {err}"
        finally:
            if vae:
                pipe.set_vae(None)

    def _trim_live(self, keep: int = 64) -> None:
        done = [k for k in self._live if k not in self._tokens]
        for k in done[:-keep]:
            del self._live[k]

