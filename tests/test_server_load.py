"""Load: 20 concurrent clients against `sdlab serve` in a subprocess on loopback (tiny model); no
job is lost; then SIGKILL mid-queue, restart on the same database, and every job finishes.
The code is benchmarks/server_load.py (also runnable by hand); this test asserts its figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sdlab.io.metadata import read_png_metadata

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "server_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("server_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["server_load"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_concurrent_clients_and_sigkill_recovery(tiny_model_dir, tmp_path):
    bench = _bench()
    out = tmp_path / "out"
    with open(tmp_path / "server.log", "w") as log:
        fig = bench.run(str(tiny_model_dir), out, clients=20, jobs_per_client=2, steps=4, max_queue=25, log=log)
    print("\n" + bench.table(fig))
    # phase 1: every submission accounted for: accepted and finished, or cleanly refused with 503
    assert fig["failures"] == [] and set(fig["rejected"]) <= {503}
    assert fig["accepted"] + sum(fig["rejected"].values()) == fig["submitted"] == 40
    assert fig["accepted"] >= 25
    assert all(j["state"] == "done" for j in fig["load_jobs"].values())
    # phase 2: killed mid-queue, restarted: the running job came back interrupted, the rest still queued
    assert fig["crash_failures"] == [] and fig["crash_accepted"] == 20
    assert fig["at_kill"]["done"] >= 2 and fig["at_kill"]["running"] == 1
    after = fig["after_restart"]
    assert after["interrupted"] <= 1 and after["failed"] == after["cancelled"] == 0
    assert after["done"] >= fig["at_kill"]["done"] and after["interrupted"] + after["queued"] + after["running"] > 0
    assert all(j["state"] == "done" for j in fig["crash_jobs"].values())
    # every done job's images exist and carry its seed; at most the one interrupted job wrote twice
    names = set()
    for job in list(fig["load_jobs"].values()) + list(fig["crash_jobs"].values()):
        (image,) = job["result"]["images"]
        assert read_png_metadata(out / image["name"])["params"]["Seed"] == job["params"]["seed"]
        names.add(image["name"])
    on_disk = {p.name for p in out.glob("*.png")}
    assert names <= on_disk and len(on_disk - names) <= after["interrupted"]
