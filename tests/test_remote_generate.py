"""`sdlab generate --server URL` against a real `sdlab serve` subprocess (tiny model, a token):
the images saved here have the names, metadata and pixels of a local run; the remote path
imports no torch; an unreachable server, a wrong token, another model, an option the server
cannot apply and a setting it refuses each give one clear line."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlab.cli.main import main
from sdlab.io.metadata import read_png_metadata
from server_util import free_port

TOKEN = "a-test-token-of-some-length"
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "server_load.py"


def _server_load():
    spec = importlib.util.spec_from_file_location("server_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["server_load"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, monkeypatch_module):
    bench = _server_load()
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    monkeypatch_module.setenv("SDLAB_TOKEN", TOKEN)        # the server's token (and the client's default)
    with open(root / "server.log", "w") as log:
        proc = bench.start_server(port, root / "srv", str(tiny_model_dir), 10, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _wait(url: str, proc, timeout: float = 300.0) -> None:
    import time
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "sdlab serve exited"
        try:
            req = urllib.request.Request(url + "/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("sdlab serve did not come up")


ARGS = ["generate", "a red circle", "--steps", "3", "--seed", "5", "--batch-size", "2"]


def test_remote_images_are_a_local_runs(server, tiny_model_dir, tmp_path, capsys):
    local, remote = tmp_path / "local", tmp_path / "remote"
    assert main(ARGS + ["--model", str(tiny_model_dir), "--out", str(local)]) == 0
    assert main(ARGS + ["--model", str(tiny_model_dir), "--out", str(remote), "--server", server]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.name for p in local.iterdir())
    assert names == ["00000-5.png", "00001-6.png", "grid-00001.png"]
    assert sorted(p.name for p in remote.iterdir()) == names
    assert sorted(Path(p).name for p in printed[len(printed) // 2:]) == names
    for name in names:
        a, b = read_png_metadata(local / name), read_png_metadata(remote / name)
        assert (a["parameters"], a["settings"]) == (b["parameters"], b["settings"])
        assert np.array_equal(np.asarray(Image.open(local / name)), np.asarray(Image.open(remote / name)))
    # a second run numbers on, never replaces
    assert main(ARGS + ["--model", str(tiny_model_dir), "--out", str(remote), "--server", server, "--no-grid"]) == 0
    assert sorted(p.name for p in remote.iterdir()) == sorted(names + ["00002-5.png", "00003-6.png"])


def test_remote_generate_imports_no_torch(server, tiny_model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "sdlab", "generate", "a blue square", "--steps",
                           "2", "--model", str(tiny_model_dir), "--server", server, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in (tmp_path / "o").iterdir()][0].endswith(".png")
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "diffusers", "transformers"}


@pytest.mark.parametrize("extra, message", [
    (["--server-token", "wrong"], "refused the access token (401)"),
    (["--steps", "151"], "refused the job (422): steps:"),
    (["--lora", "x.safetensors"], "--lora is not sent to a server"),
    (["--fast"], "--fast is not sent to a server"),
])
def test_refusals_are_one_line(server, tiny_model_dir, tmp_path, capsys, extra, message):
    argv = ["generate", "a red circle", "--model", str(tiny_model_dir), "--server", server, "--out", str(tmp_path / "o")]
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sdlab: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_another_model_on_the_server_is_refused(server, tmp_path, capsys):
    """No --model: the shipped model is asked for, and the server runs the tiny one."""
    assert main(["generate", "a red circle", "--server", server, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "runs model" in err and "not the shipped model" in err and "--model" in err


def test_unreachable_server(tiny_model_dir, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["generate", "a red circle", "--server", url, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the sdlab server at {url}" in err and "sdlab serve" in err
    assert main(["generate", "a red circle", "--server", "localhost:7860", "--out", str(tmp_path / "o")]) == 2
    assert "must be an http:// or https:// URL" in capsys.readouterr().err
