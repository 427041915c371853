"""`accelerate launch` with 2 CPU processes (gloo) and batch B reaches the weights of one
process with batch 2B: the loop shards each global batch by sample position."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(model, data, out, batch):
    return ["train", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--max-steps", "4", "--batch-size", str(batch), "--rank", "2", "--lr", "1e-2", "--device", "cpu",
            "--random-crop", "--flip", "--lr-scheduler", "linear", "--lr-warmup-steps", "1"]


def test_two_processes_match_one(tiny_model_dir, tmp_path):
    from sdlab.cli.main import main
    from sdlab.world.data import export_folder

    data = export_folder(tmp_path / "data", 5, seed=8)
    assert main(_args(tiny_model_dir, data, tmp_path / "one", 4)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "sdlab.cli.main",
           *_args(tiny_model_dir, data, tmp_path / "two", 2)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "lora_kohya.safetensors"))
    two = load_file(str(tmp_path / "two" / "lora_kohya.safetensors"))
    ups = [k for k in one if k.endswith("lora_up.weight")]
    assert one.keys() == two.keys() and max(one[k].abs().max().item() for k in ups) > 1e-2   # it trained
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-4
    rows_one = (tmp_path / "one" / "logs" / "loss.csv").read_text().splitlines()
    rows_two = (tmp_path / "two" / "logs" / "loss.csv").read_text().splitlines()
    for a, b in zip(rows_one[1:], rows_two[1:]):                       # same mean loss per step
        assert abs(float(a.split(",")[1]) - float(b.split(",")[1])) < 1e-4
