"""Resumable stage checkpoints for the base-model recipe, written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def save_stage(folder: Path, model, optimizer, state: dict, ema=None) -> None:
    """Write model (save_pretrained), optimizer, EMA and state to `folder` via a temp folder
    and a rename; the previous checkpoint is replaced only once the new one is complete."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "model")
    if ema is not None:
        ema.save_pretrained(tmp / "ema")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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


def load_optimizer(folder: Path, optimizer) -> None:
    optimizer.load_state_dict(torch.load(Path(folder) / "optimizer.pt", weights_only=True))
