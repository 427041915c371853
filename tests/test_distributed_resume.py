"""The shipped accelerate config docs/accelerate/multi_cpu.yaml (2 CPU processes, gloo): a run
stopped after 2 steps and resumed to 4 ends with the weights and losses of a run that trained 4
steps straight (what a multi-node run relies on after a restart)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from test_training_distributed import _free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "docs" / "accelerate" / "multi_cpu.yaml"


def _launch(model, data, out, steps, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
           "--main_process_port", str(_free_port()), "-m", "sdlab.cli.main",
           "train", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
           "--max-steps", str(steps), "--batch-size", "2", "--rank", "2", "--lr", "1e-2", "--device", "cpu",
           "--random-crop", "--flip", "--checkpoint-every", "100", *extra]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_stop_and_resume_exactly(tiny_model_dir, tmp_path):
    from sdlab.world.data import export_folder

    data = export_folder(tmp_path / "data", 5, seed=8)
    _launch(tiny_model_dir, data, tmp_path / "straight", 4)
    _launch(tiny_model_dir, data, tmp_path / "split", 2)
    _launch(tiny_model_dir, data, tmp_path / "split", 4, "--resume", "latest")
    straight = load_file(str(tmp_path / "straight" / "lora_kohya.safetensors"))
    split = load_file(str(tmp_path / "split" / "lora_kohya.safetensors"))
    assert straight.keys() == split.keys()
    assert max((straight[k] - split[k]).abs().max().item() for k in straight) == 0.0
    losses = [(tmp_path / run / "logs" / "loss.csv").read_text().splitlines()[1:] for run in ("straight", "split")]
    assert [r.split(",")[:2] for r in losses[0]] == [r.split(",")[:2] for r in losses[1]]
