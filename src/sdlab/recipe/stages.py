"""What every stage of the base recipe shares: its checkpoints and its timed loop.

A stage's checkpoints are the training loop's (sdlab.training.checkpoints): the folder
`RUN/STAGE/checkpoints/step-NNNNNNNN/` with `state.safetensors` (every tensor: model weights,
optimizer moments, EMA, RNG states) and `state.json` (model configs, optimizer settings, the
stage's progress), made by one rename of a complete temporary folder. A rerun resumes the newest
one, RNG streams included, so an interrupted stage continues as it would have run on.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from ..training import checkpoints as ck

STAGES = ("vae", "vae_decoder", "clip", "unet")


def checkpoint_root(run_dir: Path, stage: str) -> Path:
    return Path(run_dir) / stage / "checkpoints"


def latest(run_dir: Path, stage: str) -> Path | None:
    """The newest checkpoint of `stage` in `run_dir` (None before the stage has run)."""
    return ck.resolve_resume("latest", checkpoint_root(run_dir, stage))


def progress(run_dir: Path, stage: str) -> dict:
    """The stage's progress (step, seconds, what it measured) from state.json alone; {} before it ran."""
    path = latest(run_dir, stage)
    return ck.checkpoint_settings(path, ("progress",)).get("progress", {}) if path else {}


def load(run_dir: Path, stage: str) -> dict | None:
    """The newest checkpoint's whole state, or None."""
    path = latest(run_dir, stage)
    return ck.load_checkpoint(path)[1] if path else None


def save(run_dir: Path, stage: str, state: dict) -> Path:
    """Write `state` (with `progress`) as the stage's checkpoint; the previous one goes once it is in place."""
    return ck.save_checkpoint(checkpoint_root(run_dir, stage), state["progress"]["step"], state, keep_last=1)


# --- models in a checkpoint: {"class", "config", "weights"} ---------------------------------------
def _classes() -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel

    return {"AutoencoderKL": (AutoencoderKL, None), "UNet2DConditionModel": (UNet2DConditionModel, None),
            "CLIPModel": (CLIPModel, CLIPConfig), "CLIPTextModel": (CLIPTextModel, CLIPTextConfig)}


def model_entry(model) -> dict:
    """A diffusers or transformers model as a checkpoint entry: its class, config and weights."""
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    config.pop("_name_or_path", None)             # where it was loaded from: not part of the model
    return {"class": type(model).__name__, "config": config, "weights": model.state_dict()}


def build_model(entry: dict):
    """The model a `model_entry` describes, with its weights."""
    cls, config_cls = _classes()[entry["class"]]
    model = cls.from_config(entry["config"]) if config_cls is None else cls(config_cls.from_dict(entry["config"]))
    model.load_state_dict(entry["weights"])
    return model


class Stage:
    """One stage's run: its saved state (or none), progress, models, optimizer and random
    streams, checkpointed together by `save()`."""

    def __init__(self, run_dir: Path, name: str):
        self.run_dir, self.name = Path(run_dir), name
        self.saved = load(run_dir, name) or {}
        self.progress = self.saved.get("progress", {"step": 0, "seconds": 0.0})
        self.models: dict = {}
        self.optimizer = self.ema = None
        self.rng = self.generator = None

    def model(self, key: str, build, device):
        """The checkpoint's model `key`, else `build()`, on `device`."""
        entry = self.saved.get("models", {}).get(key)
        self.models[key] = (build_model(entry) if entry else build()).to(device)
        return self.models[key]

    def restore_optimizer(self, optimizer) -> bool:
        """Load the saved optimizer state into `optimizer`; False when there is none (a fresh one)."""
        self.optimizer = optimizer
        if "optimizer" not in self.saved:
            return False
        optimizer.load_state_dict(self.saved["optimizer"])
        return True

    def restore_ema(self, ema) -> None:
        self.ema = ema
        if "ema" in self.saved:
            ema.load_state_dict(self.saved["ema"])

    def random(self, seed: int) -> tuple[random.Random, torch.Generator]:
        """The stage's python and torch random streams as saved (and the global RNGs), or
        fresh ones seeded with `seed` + step (a seeded run, or a fresh start)."""
        self.rng, self.generator = random.Random(), torch.Generator()
        saved = self.saved.get("rng")
        if saved is None:
            self.rng.seed(seed + self.progress["step"])
            self.generator.manual_seed(1000 + seed + self.progress["step"])
        else:
            self.rng.setstate(saved["python"])
            self.generator.set_state(saved["torch"])
            ck.set_rng_state(saved["global"])
        return self.rng, self.generator

    def state(self) -> dict:
        state = {"progress": self.progress, "models": {k: model_entry(m) for k, m in self.models.items()},
                 "rng": {"python": self.rng.getstate(), "torch": self.generator.get_state(), "global": ck.rng_state()}}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save(self, progress: dict | None = None) -> Path:
        if progress is not None:
            self.progress = progress
        return save(self.run_dir, self.name, self.state())


def run_timed(name: str, minutes: float, state: dict, step_fn, save_fn, log=print,
              save_every: float = 300.0, log_every: int = 50, max_steps: int | None = None) -> dict:
    """The loop every base-recipe stage shares: call `step_fn() -> loss` until `minutes` of
    wall time have passed (or `state["step"]` reaches `max_steps`), counting `state["step"]` and
    `state["seconds"]` (cumulative over resumes), logging the mean loss and calling
    `save_fn(state)` every `save_every` seconds and on Ctrl-C (as the training loop does)."""
    start = last_save = window = time.time()
    base, losses = state["seconds"], []
    try:
        while time.time() - start < minutes * 60 and (max_steps is None or state["step"] < max_steps):
            losses.append(float(step_fn()))
            state["step"] += 1
            if state["step"] % log_every == 0:
                log(f"{name} step {state['step']} loss {sum(losses) / len(losses):.4f} "
                    f"({(time.time() - window) / len(losses):.2f}s/step)")
                losses, window = [], time.time()
            if time.time() - last_save > save_every:
                state["seconds"] = base + time.time() - start
                save_fn(state)
                last_save = time.time()
    except KeyboardInterrupt:
        state["seconds"] = base + time.time() - start
        log(f"{name} interrupted at step {state['step']}: saving a checkpoint")
        save_fn(state)
        raise
    state["seconds"] = base + time.time() - start
    return state


def optimizer_step(opt, loss, params=None, clip: float | None = None) -> float:
    """Zero grads, backprop, optionally clip, step; returns the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    return loss.item()
