"""Nothing sdlab writes replaces a file it did not write in the same run: folders of outputs are
numbered onwards, an explicit output file that exists is refused before sampling; temp entries
that a killed sdlab left are cleaned on the next start; a resume keeps the run's base model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from PIL import Image

from sdlab.cli.main import main
from sdlab.errors import ConfigError
from sdlab.io.atomic import OutputExists, atomic_dir, atomic_save, atomic_write_bytes, clean_stale_temps
from sdlab.io.outputs import next_index


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out.split(), out.err


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def kept(before: dict, folder) -> bool:
    """Every file of `before` is still in `folder`, byte for byte."""
    now = snapshot(folder)
    return all(now.get(name) == data for name, data in before.items())


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the write itself -------------------------------------------------------------------------

@pytest.mark.parametrize("hard_links", [True, False])
def test_atomic_save_without_replace_keeps_an_existing_file(tmp_path, monkeypatch, hard_links):
    if not hard_links:          # a filesystem without hard links: the O_EXCL fallback
        monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(PermissionError(1, "no links")))
    target = tmp_path / "a.png"
    assert atomic_write_bytes(target, b"new", replace=False) == target and target.read_bytes() == b"new"
    with pytest.raises(OutputExists, match="'.*a.png' exists; choose another name or remove it"):
        atomic_save(target, lambda tmp: tmp.write_bytes(b"other"), replace=False)
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_next_index_counts_grids_and_sweeps(tmp_path):
    assert next_index(tmp_path) == 0
    for name in ("00002-7.png", "grid-00004.png", "notes-00009.txt", "123-x.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_index(tmp_path) == 5
    for name in ("sweep-00006.png", "mix-sweep-00007.png", "00007-3-pair.png"):
        (tmp_path / name).write_bytes(b"")
    assert next_index(tmp_path) == 8


# --- commands run twice into one folder ---------------------------------------------------------

def test_generate_numbers_past_grids(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    base = ["generate", "a red circle", "--model", tiny_model_dir, "--steps", 1, "--batch-size", 2, "--out", out]
    code, paths, _ = run(capsys, *base, "--seed", 3)
    assert code == 0 and [p.rsplit("/", 1)[1] for p in paths] == ["00000-3.png", "00001-4.png", "grid-00001.png"]
    for p in paths[:2]:
        os.remove(p)                                  # the user kept only the grid
    first = snapshot(out)
    code, paths, _ = run(capsys, *base, "--seed", 7)
    assert code == 0 and [p.rsplit("/", 1)[1] for p in paths] == ["00002-7.png", "00003-8.png", "grid-00003.png"]
    assert kept(first, out)


def test_edit_twice_keeps_the_first_edit(capsys, tiny_model_dir, tmp_path):
    code, first_paths, _ = run(capsys, "edit", "a red circle", "a red square", "--model", tiny_model_dir,
                               "--steps", 1, "--out", tmp_path)
    assert code == 0
    first = snapshot(tmp_path)
    code, paths, _ = run(capsys, "edit", "a blue circle", "a blue square", "--model", tiny_model_dir,
                         "--steps", 1, "--out", tmp_path)
    assert code == 0 and kept(first, tmp_path)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["00001-0-source.png", "00001-0-target.png", "00001-0-pair.png"]
    assert len(snapshot(tmp_path)) == 6


def test_attend_twice_keeps_the_first_maps(capsys, tiny_model_dir, tmp_path):
    argv = ["--model", tiny_model_dir, "--steps", 1, "--seed", 2, "--out", tmp_path, "--res", 8]
    assert run(capsys, "attend", "a red circle", *argv)[0] == 0
    first = snapshot(tmp_path)
    code, paths, _ = run(capsys, "attend", "a blue square", *argv)
    assert code == 0 and kept(first, tmp_path)
    assert paths[-1].endswith("/00001-2-grid.png") and len(snapshot(tmp_path)) == len(first) + len(paths)


def test_mix_sweep_twice_keeps_the_first_sweep(capsys, tiny_model_dir, tmp_path):
    argv = ["circle", "square", "--sweep", 2, "--model", tiny_model_dir, "--steps", 1, "--seed", 4, "--out", tmp_path]
    code, paths, _ = run(capsys, "mix", "a red {}", *argv)
    assert code == 0 and paths == [str(tmp_path / "mix-sweep-00000.png")]
    first = snapshot(tmp_path)
    code, paths, _ = run(capsys, "mix", "a blue {}", *argv)
    assert code == 0 and paths == [str(tmp_path / "mix-sweep-00001.png")] and kept(first, tmp_path)


def test_interpolate_refuses_an_existing_out_before_sampling(capsys, tiny_model_dir, tmp_path):
    folder = tmp_path / "D"
    folder.mkdir()
    (folder / "movie.png").write_bytes(b"the user's own picture")
    argv = ["interpolate", "a red circle", "a blue square", "--frames", 2, "--steps", 1, "--seed", 1]
    code, paths, _ = run(capsys, *argv, "--model", tiny_model_dir, "--out", folder / "movie.gif")
    assert code == 0 and paths == [str(folder / "movie.gif"), str(folder / "movie-strip.png")]
    first = snapshot(folder)
    assert first["movie.png"] == b"the user's own picture"
    # refused before the model loads: a model that does not exist is never reached
    for out in ("movie.gif", "movie-strip.png"):
        before = snapshot(folder)
        code, paths, err = run(capsys, *argv, "--model", tmp_path / "no-model", "--out", folder / "movie.gif")
        assert code == 2 and paths == [] and snapshot(folder) == before
        assert err == f"sdlab: error: '{folder / out}' exists; choose another --out or remove it\n"
        (folder / "movie.gif").unlink(missing_ok=True)


def test_generate_refuses_an_existing_trajectory_before_sampling(capsys, tmp_path):
    (tmp_path / "t.gif").write_bytes(b"mine")
    code, paths, err = run(capsys, "generate", "x", "--model", tmp_path / "no-model", "--out", tmp_path,
                           "--trajectory", tmp_path / "t.gif")
    assert code == 2 and err == f"sdlab: error: '{tmp_path / 't.gif'}' exists; choose another --trajectory or remove it\n"
    assert (tmp_path / "t.gif").read_bytes() == b"mine"


# --- temp entries a killed sdlab left ------------------------------------------------------------

def _temps(folder, dead: int) -> dict:
    """Temp entries of every kind: stale ones (True) and ones a live writer may hold (False)."""
    entries = {f".00000-1.png.tmp-{dead}-0123abcd": True,           # this sdlab, killed
               f".00001-1.png.tmp-{os.getpid()}-0123abcd": False,   # a live process (this one)
               ".00002-1.png.tmp-89abcdef": True,                   # an older sdlab's, hours old
               ".00003-1.png.tmp-456789ab": False}                  # an older sdlab's, just written
    for name in entries:
        (folder / name).write_bytes(b"partial")
    hours_ago = time.time() - 3 * 3600
    os.utime(folder / ".00002-1.png.tmp-89abcdef", (hours_ago, hours_ago))
    return entries


def test_a_command_cleans_stale_temps_of_its_folder(capsys, tiny_model_dir, tmp_path):
    entries = _temps(tmp_path, dead_pid())
    (tmp_path / ".hidden-user-file.tmp").write_bytes(b"not sdlab's")
    code, _, _ = run(capsys, "generate", "x", "--model", tiny_model_dir, "--steps", 1, "--seed", 1, "--out", tmp_path)
    assert code == 0
    for name, stale in entries.items():
        assert (tmp_path / name).exists() != stale, name
    assert (tmp_path / ".hidden-user-file.tmp").exists()


def test_an_interrupted_folder_swap_is_put_back(tmp_path):
    dead = dead_pid()
    with atomic_dir(tmp_path / "step-1") as d:
        (d / "state.json").write_text("{}")
    (tmp_path / "step-1").rename(tmp_path / f".step-1.old-{dead}-0123abcd")     # killed between the renames
    (tmp_path / f".step-2.old-{dead}-0123abcd").mkdir()                         # killed before the cleanup
    (tmp_path / "step-2").mkdir()
    removed = clean_stale_temps(tmp_path)
    assert len(removed) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["step-1", "step-2"]
    assert (tmp_path / "step-1" / "state.json").read_text() == "{}"


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (32, 32), colour).save(folder / f"{i}.png")
    return folder


def _train(model, data, out, *extra):
    return main(["train", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out), "--rank", "2",
                 "--instance-prompt", "a sks shape", "--device", "cpu", "--max-steps", "1", "--checkpoint-every", "1",
                 *extra])


def test_a_training_run_cleans_killed_checkpoint_writes(capsys, tiny_model_dir, tmp_path, data):
    out = tmp_path / "run"
    dead = dead_pid()
    stale = out / "checkpoints" / f".step-00000004.tmp-{dead}-0123abcd"
    stale.mkdir(parents=True)
    (stale / "state.safetensors").write_bytes(b"\0" * 1000)
    live = out / "checkpoints" / f".step-00000005.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    sample = out / "samples" / f".step-00000004.png.tmp-{dead}-89abcdef"
    sample.parent.mkdir()
    sample.write_bytes(b"partial")
    assert _train(tiny_model_dir, data, out) == 0
    assert not stale.exists() and not sample.exists() and live.is_dir()
    assert [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-00000001"]


# --- a resume keeps the base model ------------------------------------------------------------------

def test_resume_with_another_model_is_refused(capsys, tiny_model_dir, tmp_path, data):
    out = tmp_path / "run"
    assert _train(tiny_model_dir, data, out) == 0
    config = (out / "training_config.json").read_text()
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    capsys.readouterr()
    assert _train(other, data, out, "--resume", "latest", "--max-steps", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained with other settings (model '" in err[0]
    assert f"'{tiny_model_dir.resolve()}' -> '{other.resolve()}'" in err[0]
    assert (out / "training_config.json").read_text() == config
    assert _train(tiny_model_dir, data, out, "--resume", "latest", "--max-steps", "2") == 0     # its own model


def test_a_checkpoint_of_an_older_sdlab_is_compared_with_its_run_config(tmp_path):
    from sdlab.pipeline import DEFAULT_MODEL
    from sdlab.training.loop import RUN_CONFIG, checkpoint_model, model_identity

    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    ckpt.mkdir(parents=True)
    assert checkpoint_model(ckpt, {}) is None                           # nothing recorded: nothing to compare
    (tmp_path / "run" / RUN_CONFIG).write_text(json.dumps({"model": None}))
    assert checkpoint_model(ckpt, {}) == model_identity(None)           # the shipped model
    assert checkpoint_model(ckpt, {"model": "/m"}) == "/m"
    assert model_identity(None) == model_identity(str(DEFAULT_MODEL)) == "the shipped model"   # not its path


def test_resume_from_the_shipped_model_onto_another_is_refused_before_loading(tmp_path, data):
    from sdlab.training import checkpoints as ck
    from sdlab.training.config import TrainingConfig
    from sdlab.training.loop import train
    from sdlab.training.methods.textual_inversion import TextualInversion, TIOptions

    method = TextualInversion(TIOptions(placeholder="<x>", initializer="shape", num_vectors=1, templates="object"))
    out = tmp_path / "run"
    ck.save_checkpoint(out / "checkpoints", 1, {"method": method.name, "options": {}, "model": "the shipped model"}, 1)
    config = TrainingConfig(method=method.name, data_dir=str(data), output_dir=str(out), model=str(tmp_path / "m"),
                            options=method.options)
    with pytest.raises(ConfigError, match=f"other settings .model the shipped model -> '{tmp_path / 'm'}'"):
        train(config, method, resume="latest")            # the model folder does not exist: it is never loaded
