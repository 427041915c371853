"""Helpers shared by the server tests: wait for jobs, start a real server on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

TERMINAL = {"done", "failed", "cancelled", "interrupted"}
SRC = Path(__file__).resolve().parents[1] / "src"


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


def start_server(port: int, *args: str, log=None) -> subprocess.Popen:
    """`sdlab serve` in a subprocess on 127.0.0.1:port (this checkout's src first on the path)."""
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "sdlab.cli.main", "serve", "--port", str(port), *args]
    return subprocess.Popen(cmd, env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def wait_healthy(base_url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not healthy after {timeout} s")
