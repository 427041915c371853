"""`sdlab batch` in-process (--local): prompt files of every format, per-row overrides checked by
GenerationConfig, bad rows recorded and skipped, exactly-once resume after a kill (SIGKILL of
the driver: every row once, no partial PNG), LoRA rows that leave the weights as loaded.
The same Renderer runs on Ray (tests/test_batch_ray.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.batch import ModelSpec, Renderer
from sdlab.batch.manifest import Manifest
from sdlab.batch.rows import Row, read_rows, row_config
from sdlab.cli.main import main
from sdlab.config import GenerationConfig
from sdlab.errors import ConfigError
from sdlab.io.metadata import read_png_metadata

ROOT = Path(__file__).resolve().parents[1]


def _batch(model, prompts, out, *extra) -> int:
    return main(["batch", str(prompts), "--out", str(out), "--model", str(model), "--steps", "2", "--local", *extra])


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_formats_give_the_same_rows(tmp_path):
    """One table as JSONL, CSV, text and Parquet: the same configs, aliases and size included."""
    rows = [{"prompt": "a red circle", "seed": 7, "cfg": 3.5, "size": "24x16"},
            {"prompt": "a blue square, big", "steps": 4, "negative": "green"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "p.csv").write_text('prompt,seed,cfg,size,steps,negative\na red circle,7,3.5,24x16,,\n'
                                    '"a blue square, big",,,,4,green\n')
    base = GenerationConfig("", steps=9, seed=100)
    configs = {fmt: [row_config(r, base)[0] for r in read_rows(tmp_path / f"p.{ext}", fmt)]
               for fmt, ext in (("jsonl", "jsonl"), ("csv", "csv"))}
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    keys = sorted({k for r in rows for k in r})                 # empty cells: nulls, as a row leaves them out
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), tmp_path / "p.parquet")
    configs["parquet"] = [row_config(r, base)[0] for r in read_rows(tmp_path / "p.parquet", "parquet")]
    first, second = configs["jsonl"]
    assert (first.seed, first.cfg_scale, first.width, first.height, first.steps) == (7, 3.5, 24, 16, 9)
    assert (second.seed, second.steps, second.negative_prompt) == (101, 4, "green")   # base seed + row index
    assert configs["csv"] == configs["jsonl"] == configs["parquet"]
    (tmp_path / "p.txt").write_text("a red circle\n\n  \na blue square, big\n")
    assert [(r.index, r.id, r.values) for r in read_rows(tmp_path / "p.txt", "text")] == [
        (0, "00000000", {"prompt": "a red circle"}), (1, "00000001", {"prompt": "a blue square, big"})]


@pytest.mark.parametrize("values, message", [
    ({"prompt": "x", "steps": 0}, "steps must be between 1 and 1000"),
    ({"prompt": "x", "sed": 3}, "unknown field 'sed'"),
    ({"prompt": "x", "steps": "many"}, "steps must be an integer"),
    ({"prompt": "x", "size": "big"}, "size must be WIDTHxHEIGHT"),
    ({"prompt": "x", "sampler": "Nope"}, "Nope"),
    ({"seed": 3}, "no prompt"),
    ({"prompt": "x", "cfg": 2, "cfg_scale": 3}, "not both"),
])
def test_bad_overrides_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        row_config(Row(0, "00000000", values), GenerationConfig(""))


def test_bad_rows_recorded_and_the_rest_rendered(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red circle", "seed": 3}\n{"prompt": "x", "steps": 0}\nnot json\n'
                       '{"prompt": "y", "id": "../up"}\n"a green star"\n{"prompt": "z", "id": "mine"}\n')
    assert _batch(tiny_model_dir, prompts, tmp_path / "out") == 1        # some rows failed
    records = {r["id"]: r for r in _records(tmp_path / "out")}
    assert {k: r["status"] for k, r in records.items()} == {
        "00000000": "ok", "00000001": "failed", "00000002": "failed", "00000003": "failed", "00000004": "ok",
        "mine": "ok"}
    assert "steps must be between 1 and 1000" in records["00000001"]["error"]
    assert "line 3: not JSON" in records["00000002"]["error"]
    assert "a row id must be a single file name" in records["00000003"]["error"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["00000000.png", "00000004.png", "mine.png"]
    meta = read_png_metadata(tmp_path / "out" / "00000000.png")
    assert meta["prompt"] == "a red circle" and meta["params"]["Seed"] == 3 and meta["params"]["Steps"] == 2
    assert meta["settings"]["batch_row"] == {"id": "00000000", "index": 0}
    assert records["00000004"]["seed"] == 4 and records["mine"]["settings"]["prompt"] == "z"
    assert "row 00000001: steps must be" in capsys.readouterr().err


def test_folder_checks(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "photo.png").write_bytes(b"x")
    assert _batch(tiny_model_dir, prompts, other) == 2                 # not a batch folder: refused
    assert "holds no batch" in capsys.readouterr().err
    assert _batch(tiny_model_dir, prompts, tmp_path / "out") == 0
    assert _batch(tiny_model_dir, prompts, tmp_path / "out", "--cfg-scale", "3") == 2   # other settings
    assert "cfg_scale 7.5 -> 3.0" in capsys.readouterr().err      # unset: the model's recommended scale
    assert _batch(tiny_model_dir, prompts, tmp_path / "out", "--cfg-scale", "7.5") == 0  # that scale spelled out
    bad = tmp_path / "p.csv"
    bad.write_text("prompt,colour\nred,blue\n")
    assert _batch(tiny_model_dir, bad, tmp_path / "out2") == 2
    assert "unknown column 'colour'" in capsys.readouterr().err


def test_resume_renders_only_missing_rows(tiny_model_dir, tmp_path):
    """A run cut short (the last manifest line half-written, an image without its record, a
    temp file of a killed write): resuming renders just the missing rows, each recorded once."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(6)))
    out = tmp_path / "out"
    assert _batch(tiny_model_dir, prompts, out) == 0
    reference = {p.name: _pixels(p) for p in out.glob("*.png")}
    lines = (out / "manifest.jsonl").read_text().splitlines(keepends=True)
    (out / "manifest.jsonl").write_text("".join(lines[:3]) + lines[3][:20])   # rows 3.. lost, a torn line
    (out / "00000005.png").unlink()
    (out / ".00000005.png.tmp-999999-0123abcd").write_bytes(b"half")             # a dead writer's temp
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert _batch(tiny_model_dir, prompts, out) == 0
    assert [r["id"] for r in _records(out)] == [f"{i:08d}" for i in range(6)]
    assert all(r["status"] == "ok" for r in _records(out))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in kept} == kept   # never rewritten
    assert not list(out.glob(".*tmp*"))
    for name, pixels in reference.items():
        assert np.array_equal(_pixels(out / name), pixels)
    assert _batch(tiny_model_dir, prompts, out) == 0                    # all done: nothing to add
    assert len(_records(out)) == 6


def test_existing_file_of_another_row_is_not_replaced(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red circle", "id": "a", "seed": 5}\n{"prompt": "a blue square", "id": "a", "seed": 5}\n')
    assert _batch(tiny_model_dir, prompts, tmp_path / "out") == 1
    first, second = _records(tmp_path / "out")
    assert first["status"] == "ok" and second["status"] == "failed"
    assert "'a.png' exists with other settings (prompt)" in second["error"]
    assert read_png_metadata(tmp_path / "out" / "a.png")["prompt"] == "a red circle"


def test_manifest_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"id": "a", "status": "ok", "file": "a.png", "error": null}\n{"id": "b", "sta')
    manifest = Manifest(tmp_path).load()
    assert manifest.done() == {"a"} and path.read_text().count("\n") == 1
    path.write_text('{"id": "a"\n{"id": "b", "status": "ok"}\n')
    with pytest.raises(ConfigError, match="line 1 is damaged"):
        Manifest(tmp_path).load()


def test_lora_rows_leave_other_rows_unchanged(tiny_model_dir, lora_file, tmp_path):
    """A row with its own LoRA between two plain rows: the plain rows come out as in a run with
    no LoRA row at all (the weights are put back bit for bit, not by subtracting the delta)."""
    plain, mixed = tmp_path / "plain.jsonl", tmp_path / "mixed.jsonl"
    rows = [{"prompt": "a red circle", "id": "a", "seed": 1}, {"prompt": "a red circle", "id": "c", "seed": 2}]
    plain.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    lora = {"prompt": "a red circle", "id": "b", "seed": 1, "lora": f"{lora_file}:3"}
    mixed.write_text("\n".join(json.dumps(r) for r in (rows[0], lora, rows[1])) + "\n")
    assert _batch(tiny_model_dir, plain, tmp_path / "plain") == 0
    assert _batch(tiny_model_dir, mixed, tmp_path / "mixed", "--batch-size", "3") == 0
    for name in ("a.png", "c.png"):
        assert np.array_equal(_pixels(tmp_path / "plain" / name), _pixels(tmp_path / "mixed" / name))
    assert not np.array_equal(_pixels(tmp_path / "mixed" / "a.png"), _pixels(tmp_path / "mixed" / "b.png"))
    renderer = Renderer(ModelSpec(model=str(tiny_model_dir)), GenerationConfig("", steps=2).to_dict(),
                        str(tmp_path / "direct"))
    loaded = [p.detach().clone() for p in renderer.pristine.params()]
    assert renderer.render(Row(0, "b", lora))["status"] == "ok"
    assert all(torch.equal(a, b) for a, b in zip(loaded, renderer.pristine.params()))    # bit for bit
    record = next(r for r in _records(tmp_path / "mixed") if r["id"] == "b")
    assert record["settings"]["loras"] == [{"name": lora_file.stem, "hash": record["settings"]["loras"][0]["hash"],
                                            "scale": 3.0}]


def kill_mid_run(cmd, out: Path, after_rows: int, timeout: float = 600) -> None:
    """Start `cmd`, SIGKILL it once OUT/manifest.jsonl holds `after_rows` records."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    manifest = out / "manifest.jsonl"
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_text().count("\n") >= after_rows:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def check_exactly_once(out: Path, n: int) -> None:
    """Every row recorded once, ok, with one complete PNG; no temp file left."""
    records = _records(out)
    assert sorted(r["id"] for r in records) == [f"{i:08d}" for i in range(n)]
    assert all(r["status"] == "ok" for r in records)
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:08d}.png" for i in range(n)]
    for p in out.glob("*.png"):
        with Image.open(p) as im:
            im.load()                                                        # complete, decodable
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_driver_killed_then_resumed_renders_each_row_once(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"prompt {i}\n" for i in range(40)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sdlab.cli.main", "batch", str(prompts), "--out", str(out), "--model",
           str(tiny_model_dir), "--steps", "2", "--local", "--batch-size", "2"]
    kill_mid_run(cmd, out, after_rows=6)
    done_before = len(_records(out))
    assert 6 <= done_before < 40
    assert _batch(tiny_model_dir, prompts, out, "--batch-size", "2") == 0
    check_exactly_once(out, 40)
