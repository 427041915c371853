"""`sdlab batch` on a real local Ray (ray.init() with no address, CPUs limited): 200 prompts
across 2 workers equal the in-process run pixel for pixel, bad rows included; a worker killed
mid-run is restarted by Ray and the run completes; the driver killed mid-run is resumed with
every row exactly once."""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from test_batch import _pixels, _records, check_exactly_once, kill_mid_run

ray = pytest.importorskip("ray")

from sdlab.batch import BatchOptions, ModelSpec, run_batch  # noqa: E402
from sdlab.config import GenerationConfig  # noqa: E402

ACTOR_TITLE = "ray::MapWorker"      # Ray Data's actor processes set this title


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray cluster for the module: 2 CPUs (the actors), the rest of the machine left alone."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _prompts(path: Path, n: int, bad: tuple = ()) -> Path:
    lines = [json.dumps({"prompt": f"a shape number {i}", **({"steps": 0} if i in bad else {})}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(model, prompts, out, **options):
    return run_batch(prompts, out, GenerationConfig("", steps=2), ModelSpec(model=str(model)),
                     BatchOptions(**options))


def test_two_ray_workers_equal_the_local_run(local_ray, tiny_model_dir, tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl", 200, bad=(7, 150))
    local = _run(tiny_model_dir, prompts, tmp_path / "local", local=True, batch_size=16)
    on_ray = _run(tiny_model_dir, prompts, tmp_path / "ray", workers=2, batch_size=16)
    assert (local.engine, on_ray.engine) == ("local", "ray")
    assert (on_ray.ok, on_ray.failed) == (local.ok, local.failed) == (198, 2)
    by_id = {r["id"]: r for r in _records(tmp_path / "ray")}
    assert {k for k, r in by_id.items() if r["status"] == "failed"} == {"00000007", "00000150"}
    assert len({r["worker"] for r in by_id.values()}) == 2          # both actors rendered rows
    assert "steps must be between 1 and 1000" in by_id["00000007"]["error"]
    names = sorted(p.name for p in (tmp_path / "local").glob("*.png"))
    assert names == sorted(p.name for p in (tmp_path / "ray").glob("*.png")) and len(names) == 198
    for name in names:
        assert np.array_equal(_pixels(tmp_path / "local" / name), _pixels(tmp_path / "ray" / name)), name


def _actor_pids() -> list[int]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith(ACTOR_TITLE):
            found.append(p.info["pid"])
    return found


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_completes(local_ray, tiny_model_dir, tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl", 120)
    out = tmp_path / "out"
    killed = []

    def kill_one():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not killed:
            manifest = out / "manifest.jsonl"
            pids = _actor_pids()
            if pids and manifest.exists() and manifest.read_text().count("\n") >= 10:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    summary = _run(tiny_model_dir, prompts, out, workers=2, batch_size=4)
    killer.join()
    assert killed, "no worker was killed"
    assert (summary.ok, summary.failed) == (120, 0)
    check_exactly_once(out, 120)


@pytest.mark.slow
def test_driver_killed_on_ray_then_resumed(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(120)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sdlab.cli.main", "batch", str(prompts), "--out", str(out), "--model",
           str(tiny_model_dir), "--steps", "2", "--workers", "2", "--batch-size", "4"]
    kill_mid_run(cmd, out, after_rows=12)
    assert 12 <= len(_records(out)) < 120
    summary = run_batch(prompts, out, GenerationConfig("", steps=2), ModelSpec(model=str(tiny_model_dir)),
                        BatchOptions(workers=2, batch_size=4))
    assert summary.failed == 0 and summary.skipped >= 12
    check_exactly_once(out, 120)
