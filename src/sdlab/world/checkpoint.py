"""Resumable stage checkpoints for the base-model recipe, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch


def save_stage(folder: Path, model, optimizer, state: dict, ema=None, extra: dict | None = None,
               models: dict | None = None) -> None:
    """Write model (save_pretrained), optimizer, EMA model, further `models` (each to its own
    sub-folder), `extra` tensor dicts (torch.save, read back with weights_only) and state to
    `folder` via a temp folder and a rename; the previous checkpoint is replaced only once
    the new one is complete."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")
    if ema is not None:
        ema.save_pretrained(tmp / "ema")
    for name, extra_model in (models or {}).items():
        extra_model.save_pretrained(tmp / name)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    for name, obj in (extra or {}).items():
        torch.save(obj, tmp / name)
    (tmp / "state.json").write_text(json.dumps(state))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path) -> dict | None:
    f = Path(folder) / "state.json"
    return json.loads(f.read_text()) if f.exists() else None


def resume(folder: Path, load, build, make_optimizer, device, optimizer_state: bool = True):
    """(state, model, optimizer) from the checkpoint in `folder`, or fresh ones: the model
    from `load(folder / "model")` or `build()`, the optimizer from `make_optimizer(model)`
    (its saved state restored unless `optimizer_state` is False)."""
    folder = Path(folder)
    state = load_state(folder) or {"step": 0, "seconds": 0.0}
    model = (load(folder / "model") if state["step"] else build()).to(device)
    optimizer = make_optimizer(model)
    if optimizer_state and (folder / "optimizer.pt").exists():
        load_optimizer(folder, optimizer)
    return state, model, optimizer


def load_optimizer(folder: Path, optimizer) -> None:
    optimizer.load_state_dict(torch.load(Path(folder) / "optimizer.pt", map_location="cpu", weights_only=True))


def run_timed(name: str, minutes: float, state: dict, step_fn, save_fn, log=print,
              save_every: float = 300.0, log_every: int = 50) -> dict:
    """The loop every base-recipe stage shares: call `step_fn() -> loss` until `minutes` of
    wall time have passed, counting `state["step"]` and `state["seconds"]` (cumulative over
    resumes), logging the mean loss and calling `save_fn(state)` every `save_every` seconds."""
    start = last_save = window = time.time()
    base, losses = state["seconds"], []
    while time.time() - start < minutes * 60:
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
