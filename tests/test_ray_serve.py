"""`sdlab serve --ray`: the job store the replicas share (leases: a job whose replica died is run
again, a late finish from a replica that lost its lease is ignored, cancel reaches the replica
running the job), the CLI's replica options, and (slow) 2 CPU replicas on a local Ray serving 20
concurrent clients with no failed request, then one replica killed without losing an accepted job."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from sdlab.cli.main import main
from sdlab.server.shared_jobs import SharedJobStore

ROOT = Path(__file__).resolve().parents[1]


def test_a_dead_replicas_job_goes_back_to_the_queue(tmp_path):
    store = SharedJobStore(tmp_path / "jobs.sqlite3", lease_s=0.2)
    job = store.add("txt2img", {"prompt": "a"})
    first = store.claim()
    assert first["id"] == job["id"] and store.claim() is None       # leased: nobody else gets it
    store.heartbeat([job["id"]])
    time.sleep(0.1)
    assert store.claim() is None                                     # renewed in time
    time.sleep(0.3)                                                  # no heartbeat: the lease runs out
    second = store.claim()
    assert second["id"] == job["id"] and second["attempts"] == 2
    store.finish(job["id"], "done", result={"images": []}, attempt=1)    # the first replica, too late
    assert store.get(job["id"])["state"] == "running"
    store.finish(job["id"], "done", result={"images": ["x.png"]}, attempt=2)
    assert store.get(job["id"])["state"] == "done" and store.get(job["id"])["result"] == {"images": ["x.png"]}


def test_cancel_and_stop_reach_the_running_replica(tmp_path):
    store = SharedJobStore(tmp_path / "jobs.sqlite3", lease_s=30)
    a, b = store.add("txt2img", {"prompt": "a"}), store.add("txt2img", {"prompt": "b"})
    store.claim(), store.claim()
    assert store.cancel_queued(a["id"]) is False                     # running: asked, not done here
    assert store.heartbeat([a["id"], b["id"]]) == [a["id"]]          # the replica running it hears of it
    store.finish(b["id"], "interrupted", attempt=1)                   # its replica stopped: queued again
    assert store.get(b["id"])["state"] == "queued"
    reopened = SharedJobStore(tmp_path / "jobs.sqlite3", lease_s=0.1)   # the store actor restarted
    assert reopened.get(a["id"])["state"] == "running"               # a live replica may still run it
    time.sleep(0.2)
    assert reopened.claim()["id"] == a["id"]                          # nobody renewed: run again


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "--replicas needs --ray"),
    (["--ray", "--replicas", "0"], "--replicas must be between 1 and 10000"),
    (["--ray", "--min-replicas", "3", "--max-replicas", "2"], "--min-replicas 3 is above --max-replicas 2"),
    (["--ray", "--device", "cpu", "--device", "cpu"], "one --device"),
])
def test_replica_options_are_checked(args, message, tmp_path, capsys):
    assert main(["serve", "--output-dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "sdlab serve --ray exited"
        try:
            health = httpx.get(f"{url}/api/health", timeout=5).json()
            if health.get("status") == "ok":
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    raise AssertionError("the replicas did not come up")


def _replica_pids() -> list[int]:
    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if " ".join(p.info["cmdline"] or []).startswith("ray::ServeReplica:sdlab:Studio")]


def _finish(url: str, job_ids, timeout: float = 900) -> dict:
    """The final state of each job; a request that fails while a replica restarts is retried."""
    states, deadline = {}, time.monotonic() + timeout
    while len(states) < len(job_ids) and time.monotonic() < deadline:
        for job_id in set(job_ids) - set(states):
            try:
                job = httpx.get(f"{url}/api/jobs/{job_id}", timeout=30).json()
            except httpx.HTTPError:
                continue
            if job["state"] in ("done", "failed", "cancelled", "interrupted"):
                states[job_id] = job["state"]
        time.sleep(0.5)
    return states


@pytest.mark.slow
def test_two_replicas_serve_twenty_clients_and_survive_a_kill(tiny_model_dir, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "sdlab.cli.main", "serve", "--ray", "--replicas", "2",
                             "--port", str(port), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out"),
                             "--device", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_up(url, proc)
        accepted, failures, lock = [], [], threading.Lock()

        def client(i):
            for j in range(2):
                try:
                    r = httpx.post(f"{url}/api/generate", json={"prompt": f"a shape {i}-{j}", "steps": 2, "seed": i},
                                   timeout=120)
                    with lock:
                        (accepted if r.status_code == 202 else failures).append(
                            r.json()["id"] if r.status_code == 202 else f"{r.status_code} {r.text[:200]}")
                    httpx.get(f"{url}/api/jobs", timeout=120).raise_for_status()
                except httpx.HTTPError as err:
                    with lock:
                        failures.append(repr(err))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == [] and len(accepted) == 40
        assert set(_finish(url, accepted).values()) == {"done"}

        more = [httpx.post(f"{url}/api/generate", json={"prompt": f"more {i}", "steps": 8, "seed": i},
                           timeout=120).json()["id"] for i in range(12)]
        while httpx.get(f"{url}/api/health", timeout=30).json()["jobs"]["running"] < 1:
            time.sleep(0.2)
        pids = _replica_pids()
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)                  # one replica process dies mid-queue
        states = _finish(url, more)
        assert states == {job_id: "done" for job_id in more}   # every accepted job ran to the end
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
