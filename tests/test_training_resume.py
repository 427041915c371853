"""Resume is exact: a training run killed with SIGKILL after its first checkpoint and resumed
with `--resume latest` ends bit-identical to an uninterrupted run (weights, optimizer, EMA,
LR schedule, RNG states, loss log)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sdlab.errors import ConfigError
from sdlab.training import checkpoints as ck

ROOT = Path(__file__).resolve().parents[1]
STEPS = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Six non-square renders (random crops differ) with captions."""
    from sdlab.world.data import export_folder

    d = export_folder(tmp_path_factory.mktemp("resume") / "data", 6, seed=3)
    for p in d.glob("*.png"):
        Image.open(p).resize((48, 40)).save(p)
    return d


def _args(model, data, out, *extra):
    return ["train", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--max-steps", str(STEPS), "--checkpoint-every", "3", "--keep-last", "2", "--ema", "--ema-decay", "0.9",
            "--lr-scheduler", "cosine", "--lr-warmup-steps", "4", "--lr", "1e-3", "--grad-accum", "2",
            "--batch-size", "2", "--random-crop", "--flip", "--resolution", "32", "--rank", "2",
            "--validation-split", "0.2", "--validate-every", "5", "--device", "cpu", *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    return env


def _final_state(out: Path) -> dict:
    return load_file(str(ck.list_checkpoints(out / "checkpoints")[-1] / "state.safetensors"))


def test_sigkill_then_resume_is_bit_identical(tiny_model_dir, data_dir, tmp_path):
    from sdlab.cli.main import main

    # the uninterrupted reference, in this process (one torch thread, as the subprocess)
    ref = tmp_path / "ref"
    assert main(_args(tiny_model_dir, data_dir, ref)) == 0

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sdlab.cli.main", *_args(tiny_model_dir, data_dir, run)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not ck.list_checkpoints(run / "checkpoints"):
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = [int(p.name.split("-")[1]) for p in ck.list_checkpoints(run / "checkpoints")]
    assert max(killed_at) < STEPS and not (run / "lora_kohya.safetensors").exists()

    res = subprocess.run(cmd + ["--resume", "latest"], env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {run / 'checkpoints'}" in res.stderr

    a, b = _final_state(ref), _final_state(run)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:                                   # LoRA weights, Adam moments, EMA, RNG states
        assert torch.equal(a[k], b[k]), k
    fa, fb = load_file(str(ref / "lora_kohya.safetensors")), load_file(str(run / "lora_kohya.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    assert (ref / "logs" / "loss.csv").read_text() == (run / "logs" / "loss.csv").read_text()
    rows = (ref / "logs" / "loss.csv").read_text().splitlines()
    assert len(rows) == STEPS + 1 and rows[0] == "step,loss,lr,val_loss"
    assert [r.split(",")[0] for r in rows[1:] if not r.endswith(",")] == ["5", "10", "15", "20", "24"]
    # keep-last 2: only the two newest checkpoints stay
    assert [p.name for p in ck.list_checkpoints(ref / "checkpoints")] == ["step-00000021", "step-00000024"]
    # the EMA trails the raw weights: the saved (EMA) LoRA differs from the raw one
    assert any(k.startswith("lora_unet") for k in fa)


def test_checkpoint_pack_roundtrip_and_bad_resume(tmp_path):
    import numpy as np

    state = {"a": torch.arange(3.0), "opt": {0: {"step": torch.tensor(2.0)}, "groups": [{"betas": (0.9, 0.99)}]},
             "np": np.arange(4, dtype=np.uint32), "none": None, "rng": ck.rng_state()}
    path = ck.save_checkpoint(tmp_path, 5, state, keep_last=1)
    step, back = ck.load_checkpoint(path)
    assert step == 5 and torch.equal(back["a"], state["a"])
    assert back["opt"][0]["step"].item() == 2.0 and back["opt"]["groups"][0]["betas"] == (0.9, 0.99)
    assert back["np"].dtype == np.uint32 and back["np"].tolist() == [0, 1, 2, 3]
    ck.set_rng_state(back["rng"])
    x = torch.rand(3)
    ck.set_rng_state(back["rng"])
    assert torch.equal(x, torch.rand(3))
    ck.save_checkpoint(tmp_path, 6, state, keep_last=1)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000006"]
    assert ck.resolve_resume("latest", tmp_path / "none") is None
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        ck.resolve_resume(tmp_path / "missing", tmp_path)
    with pytest.raises(ConfigError, match="already holds a run .checkpoint step-00000006.; continue it"):
        ck.resolve_resume(None, tmp_path)      # a fresh start would overwrite that run


def test_a_run_is_not_lost_to_a_new_start_or_resumed_with_other_settings(capsys, tiny_model_dir, data_dir, tmp_path):
    from sdlab.cli.main import main

    def train(out, *extra):
        return main(["train", "lora", "--model", str(tiny_model_dir), "--data", str(data_dir), "--output-dir", str(out),
                     "--device", "cpu", "--max-steps", "2", "--checkpoint-every", "2", *extra])

    out = tmp_path / "run"
    assert train(out, "--rank", "2") == 0
    saved = (out / "lora_kohya.safetensors").read_bytes()
    for extra, message in [(["--rank", "2"], "already holds a run"),
                           (["--rank", "4", "--resume", "latest"], "rank 2 -> 4")]:
        assert train(out, *extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert (out / "lora_kohya.safetensors").read_bytes() == saved
    (tmp_path / "file").write_text("x")
    assert train(tmp_path / "file") == 2 and "cannot use" in capsys.readouterr().err
