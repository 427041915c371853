"""Put what a run learned into a Pipeline: a final artifact or any training checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..models import lora as lora_files
from ..training import checkpoints as ck


def load_artifact(model, artifact: str | Path | None, scale: float = 1.0, device: str = "cpu", vae=None):
    """A Pipeline of `model` with `artifact` (an embedding file, a LoRA file, a tuned VAE
    folder, a training checkpoint, or a tuned model folder, which replaces `model`) applied;
    `vae`: a VAE folder or file to sample through (a checkpoint's own tuned decoder still wins)."""
    from ..pipeline import Pipeline

    if artifact is None:
        return Pipeline.load(model, device=device, vae=vae)
    path = Path(artifact)
    if path.is_dir() and (path / "model_index.json").is_file():
        return Pipeline.load(path, device=device, vae=vae)
    if path.is_dir() and (path / "config.json").is_file():
        if vae is not None:
            raise ConfigError(f"'{artifact}' is a VAE itself: give it as --artifact or as --vae, not both")
        return Pipeline.load(model, device=device, vae=path)
    if path.is_dir() and (path / "state.json").is_file():
        return load_checkpoint(model, path, device, vae)
    pipe = Pipeline.load(model, device=device, vae=vae)
    if lora_files.is_lora_file(path, "LoRA file"):
        pipe.load_lora(path, scale)
    else:
        pipe.load_embedding(path)
    return pipe


def load_checkpoint(model, ckpt: str | Path, device: str = "cpu", vae=None):
    """A Pipeline of `model` (through `vae` when given) with a training checkpoint's weights,
    applied as its method's MethodSpec.apply_checkpoint says (EMA ones when present)."""
    from ..pipeline import Pipeline
    from ..training.methods import registry

    _, state = ck.load_checkpoint(Path(ckpt))
    if state["method"] not in registry.names():
        raise ConfigError(f"checkpoint '{ckpt}' is from an unknown method {state['method']!r}")
    pipe = Pipeline.load(model, device=device, vae=vae)
    registry.get(state["method"]).apply_checkpoint(pipe, state, Path(ckpt))
    return pipe


def checkpoints_of(run_dir: str | Path) -> list[Path]:
    found = ck.list_checkpoints(Path(run_dir) / "checkpoints")
    if not found:
        raise ConfigError(f"no checkpoints under '{run_dir}/checkpoints'")
    return found
