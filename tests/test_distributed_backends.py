"""The sharded-training accelerate configs (docs/accelerate/fsdp_gpu.yaml, deepspeed_zero2.yaml):
accelerate's own launcher reads and validates each one, and `sdlab train` started as that
launcher starts it stops before the backend is needed with sdlab's one-line error naming what it
needs. Accelerate builds FSDP and DeepSpeed only for GPU processes; without this check an FSDP
config on the CPU quietly trained plain data parallel (`--device cpu`) or one independent model
per process. The GPU run of each config (exact resume, peak memory) is
benchmarks/train_sharded.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdlab.errors import ConfigError
from sdlab.training.backends import check_backend, requested_backend
from test_training_distributed import _free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"fsdp_gpu": "FSDP", "deepspeed_zero2": "DeepSpeed"}


def launch_env(name: str) -> dict:
    """The environment `accelerate launch --config_file docs/accelerate/NAME.yaml` gives the
    training processes, built by accelerate's own launcher code."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", str(ROOT / "docs" / "accelerate" / f"{name}.yaml"), "-m", "sdlab.cli.main", "train"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    assert args.use_fsdp
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", CONFIGS)
def test_accelerate_reads_each_config_as_its_backend(name, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    env = launch_env(name)
    assert requested_backend(env) == CONFIGS[name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if name == "fsdp_gpu":                       # the plugin accelerate builds from it, as sdlab relies on
        plugin = FullyShardedDataParallelPlugin()
        assert (plugin.fsdp_version, plugin.state_dict_type.name) == (2, "FULL_STATE_DICT")
        assert plugin.cpu_offload is not None and plugin.cpu_offload.__class__.__name__ == "CPUOffloadPolicy"
    else:
        zero = DeepSpeedPlugin().deepspeed_config["zero_optimization"]
        assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu"


@pytest.mark.parametrize("name", CONFIGS)
def test_sdlab_train_stops_with_one_line_before_the_backend(name, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from sdlab.cli.main import main

    for key, value in launch_env(name).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "data").mkdir()
    args = ["train", "lora", "--model", str(tiny_model_dir), "--data", str(tmp_path / "data"),
            "--output-dir", str(tmp_path / "out"), "--max-steps", "2", "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sdlab: error: the accelerate config asks for {CONFIGS[name]}, "
                                               "which needs CUDA GPUs")
    assert "docs/accelerate/multi_cpu.yaml" in err[0]
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_no_backend_asked_for_is_no_check():
    assert check_backend("cpu", False, {}) is None
    assert check_backend(None, False, {"ACCELERATE_USE_FSDP": "false"}) is None


@pytest.mark.parametrize("device,cuda", [("cpu", True), (None, False), ("cuda", False)])
def test_fsdp_needs_a_gpu(device, cuda):
    with pytest.raises(ConfigError, match="asks for FSDP, which needs CUDA GPUs"):
        check_backend(device, cuda, {"ACCELERATE_USE_FSDP": "true"})


def test_deepspeed_needs_the_package(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="DeepSpeed, which is not installed: pip install deepspeed"):
        check_backend("cuda", True, {"ACCELERATE_USE_DEEPSPEED": "true"})


@pytest.mark.parametrize("var,name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_sharded_backends_run_one_process(var, name, monkeypatch):
    """sdlab's checkpoints hold the main process's full state: over several processes a resume of
    a sharded optimizer state would not be exact, so it is refused; one process runs."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: object() if n == "deepspeed" else real(n))
    with pytest.raises(ConfigError, match=f"{name} over 4 processes is not supported yet"):
        check_backend("cuda", True, {var: "true", "WORLD_SIZE": "4"})
    assert check_backend("cuda", True, {var: "true", "WORLD_SIZE": "1"}) == name


@pytest.mark.slow
def test_fsdp_config_on_two_cpu_processes_is_refused(tiny_model_dir, tmp_path):
    """The real launcher, 2 processes: each stops with sdlab's line (before: plain DDP, exit 0)."""
    from sdlab.world.data import export_folder

    data = export_folder(tmp_path / "data", 2, seed=8)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "docs" / "accelerate" / "fsdp_gpu.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(_free_port()), "-m", "sdlab.cli.main", "train", "lora", "--model",
           str(tiny_model_dir), "--data", str(data), "--output-dir", str(tmp_path / "out"), "--max-steps", "2",
           "--device", "cpu"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode != 0
    assert res.stderr.count("sdlab: error: the accelerate config asks for FSDP, which needs CUDA GPUs") == 2
    assert "sdlab/training" not in res.stderr          # no traceback through sdlab
    assert not (tmp_path / "out" / "checkpoints").exists()
