"""Load and crash test of `sdlab serve` on loopback: concurrent clients submit jobs; none may be
lost (each completes or gets a clean 503 "queue full" / 4xx); then the server is killed with
SIGKILL mid-queue, restarted on the same database and output folder, and must finish the rest
(interrupted jobs are resumed through the API). Prints the figures as a Markdown table.

    python benchmarks/server_load.py                         # shipped model
    python benchmarks/server_load.py --model path/to/model --clients 20 --jobs-per-client 2
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[1] / "src"
TERMINAL = {"done", "failed", "cancelled", "interrupted"}


@dataclass
class Tally:
    """What the clients saw: accepted job ids, clean rejections, and anything else (a failure)."""

    accepted: list[str] = field(default_factory=list)
    rejected: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, value) -> None:
        with self.lock:
            if kind == "accepted":
                self.accepted.append(value)
            elif kind == "rejected":
                self.rejected[value] = self.rejected.get(value, 0) + 1
            else:
                self.failures.append(value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, out_dir: Path, model: str | None, max_queue: int, log) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "sdlab.cli.main", "serve", "--port", str(port), "--output-dir", str(out_dir),
           "--max-queue", str(max_queue)] + (["--model", model] if model else [])
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 300.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not healthy after {timeout} s")


def submit(base: str, payload: dict, tally: Tally) -> None:
    """One client request: 202 -> accepted; 503 or 4xx -> a clean rejection; else a failure."""
    try:
        r = httpx.post(f"{base}/api/generate", json=payload, timeout=60)
    except httpx.HTTPError as exc:
        return tally.add("failure", f"{type(exc).__name__}: {exc}")
    if r.status_code == 202:
        tally.add("accepted", r.json()["id"])
    elif r.status_code == 503 or 400 <= r.status_code < 500:
        tally.add("rejected", r.status_code)
    else:
        tally.add("failure", f"HTTP {r.status_code}: {r.text[:200]}")


def run_clients(base: str, clients: int, jobs_per_client: int, payload: dict, seed0: int) -> Tally:
    """`clients` threads, each submitting `jobs_per_client` jobs at once (seeds seed0, seed0+1, ...)."""
    tally, barrier = Tally(), threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait()
        for j in range(jobs_per_client):
            submit(base, {**payload, "seed": seed0 + i * jobs_per_client + j}, tally)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally


def states(base: str, ids: list[str]) -> dict[str, dict]:
    return {i: httpx.get(f"{base}/api/jobs/{i}", timeout=30).json() for i in ids}


def wait_terminal(base: str, ids: list[str], timeout: float) -> dict[str, dict]:
    end = time.monotonic() + timeout
    while True:
        jobs = states(base, ids)
        if all(j["state"] in TERMINAL for j in jobs.values()) or time.monotonic() > end:
            return jobs
        time.sleep(0.25)


def kill_mid_queue(base: str, proc: subprocess.Popen, ids: list[str], done_before_kill: int) -> dict[str, int]:
    """SIGKILL the server once `done_before_kill` jobs are done and another one runs."""
    while True:
        jobs = states(base, ids)
        counts = {s: sum(j["state"] == s for j in jobs.values()) for s in ("done", "running", "queued")}
        if counts["done"] >= done_before_kill and counts["running"]:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return counts
        if counts["queued"] == counts["running"] == 0:
            raise RuntimeError("the queue drained before the kill; submit more or slower jobs")
        time.sleep(0.02)


def run(model: str | None, out_dir: Path, clients: int = 20, jobs_per_client: int = 2, steps: int = 4,
        max_queue: int = 25, timeout: float = 600.0, log=None) -> dict:
    """Both phases; returns the figures (and the job records, for the caller to check)."""
    port = free_port()
    base, fig = f"http://127.0.0.1:{port}", {"clients": clients}
    log = log or subprocess.DEVNULL
    proc = start_server(port, out_dir, model, max_queue, log)
    try:
        fig["startup_s"] = wait_healthy(base, proc)
        t0 = time.monotonic()
        load = run_clients(base, clients, jobs_per_client, {"prompt": "a red circle", "steps": steps}, 0)
        jobs = wait_terminal(base, load.accepted, timeout)
        fig.update(submitted=clients * jobs_per_client, accepted=len(load.accepted), rejected=load.rejected,
                   failures=load.failures, load_s=time.monotonic() - t0, load_jobs=jobs)
        crash = run_clients(base, clients, 1, {"prompt": "a blue star", "steps": steps * 5}, 10_000)
        t1 = time.monotonic()
        fig["at_kill"] = kill_mid_queue(base, proc, crash.accepted, done_before_kill=2)
        proc = start_server(port, out_dir, model, max_queue, log)
        fig["restart_s"] = wait_healthy(base, proc)
        after = states(base, crash.accepted)
        fig["after_restart"] = {s: sum(j["state"] == s for j in after.values())
                                for s in sorted(TERMINAL | {"queued", "running"})}
        for job_id, job in after.items():
            if job["state"] == "interrupted":
                httpx.post(f"{base}/api/jobs/{job_id}/resume", timeout=30).raise_for_status()
        fig["crash_jobs"] = wait_terminal(base, crash.accepted, timeout)
        fig.update(crash_submitted=clients, crash_accepted=len(crash.accepted), crash_rejected=crash.rejected,
                   crash_failures=crash.failures, recover_s=time.monotonic() - t1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    return fig


def table(fig: dict) -> str:
    done = lambda jobs: sum(j["state"] == "done" for j in jobs.values())  # noqa: E731
    rows = [("clients", fig["clients"]),
            ("phase 1: jobs submitted / accepted / rejected (503) / failures",
             f"{fig['submitted']} / {fig['accepted']} / {sum(fig['rejected'].values())} / {len(fig['failures'])}"),
            ("phase 1: accepted jobs done", f"{done(fig['load_jobs'])} / {fig['accepted']}"),
            ("phase 1: seconds (submit to last done)", f"{fig['load_s']:.1f}"),
            ("phase 2: jobs submitted / accepted / failures",
             f"{fig['crash_submitted']} / {fig['crash_accepted']} / {len(fig['crash_failures'])}"),
            ("phase 2: states at SIGKILL", fig["at_kill"]),
            ("phase 2: after restart", {k: v for k, v in fig["after_restart"].items() if v}),
            ("phase 2: jobs done after restart + resume", f"{done(fig['crash_jobs'])} / {fig['crash_accepted']}"),
            ("phase 2: seconds (kill, restart, finish)", f"{fig['recover_s']:.1f}"),
            ("server start / restart seconds", f"{fig['startup_s']:.1f} / {fig['restart_s']:.1f}")]
    return "\n".join(["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--jobs-per-client", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-queue", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fig = run(args.model, Path(tmp) / "out", args.clients, args.jobs_per_client, args.steps, args.max_queue)
    print(table(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
