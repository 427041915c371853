"""The sharding backends an accelerate config may ask for (FSDP, DeepSpeed ZeRO), checked before
the run starts: `accelerate launch --config_file` passes the config's `distributed_type` to the
training processes as environment variables, and accelerate builds FSDP and DeepSpeed only on
GPUs; on the CPU it would quietly run something else (FSDP with `--device cpu`: plain data
parallel; without: every process training alone). See docs/distributed.md."""

from __future__ import annotations

import importlib.util
import os

from ..errors import ConfigError

# environment variable set by `accelerate launch` -> the backend it asks for
REQUESTS = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}
# what each backend needs here, named in the error
NEEDS = {"FSDP": "CUDA GPUs (accelerate 1.x builds FSDP only for GPU processes)",
         "DeepSpeed": "CUDA GPUs and the deepspeed package (pip install deepspeed)"}


def requested_backend(environ=os.environ) -> str | None:
    """'FSDP' or 'DeepSpeed' when the accelerate config of this launch asks for it, else None."""
    found = [name for var, name in REQUESTS.items() if environ.get(var, "false").lower() in ("true", "1")]
    return found[0] if found else None


def check_backend(device: str | None, cuda: bool, environ=os.environ) -> str | None:
    """The requested sharding backend (or None); ConfigError, before anything loads, when this run
    cannot use it: no GPU (or --device cpu), DeepSpeed not installed, or more than one process
    (sdlab's checkpoints hold the main process's full state, which FSDP and ZeRO shard)."""
    backend = requested_backend(environ)
    if backend is None:
        return None
    if device == "cpu" or not cuda:
        raise ConfigError(f"the accelerate config asks for {backend}, which needs {NEEDS[backend]}; on the CPU "
                          "train data-parallel with docs/accelerate/multi_cpu.yaml")
    if backend == "DeepSpeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("the accelerate config asks for DeepSpeed, which is not installed: pip install deepspeed")
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        raise ConfigError(f"{backend} over {world} processes is not supported yet: it shards the optimizer state "
                          "across processes and sdlab's checkpoints hold one process's full state, so a resume "
                          f"would not be exact; run {backend} with num_processes 1, or data parallel on several "
                          "GPUs (docs/accelerate/multi_gpu_nodes.yaml)")
    return backend
