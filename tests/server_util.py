"""Helpers shared by the server tests: wait for jobs, find a free loopback port, serve an app."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

TERMINAL = {"done", "failed", "cancelled", "interrupted"}


def wait_job(client, job_id: str, states=TERMINAL, timeout: float = 120.0, min_step: int = 0, **kw) -> dict:
    """Poll GET /api/jobs/{id} until its state is in `states` (and, if given, it has taken min_step steps)."""
    end = time.monotonic() + timeout
    while True:
        job = client.get(f"/api/jobs/{job_id}", **kw).json()
        if job["state"] in states and job["step"] >= min_step:
            return job
        if time.monotonic() > end:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, port: int | None = None):
    """Run `app` under uvicorn in a thread on 127.0.0.1; yields the base URL, stops it after."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
