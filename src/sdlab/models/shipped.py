"""The models sdlab ships, by name: `--model shapes-sd` (the default) and `--model shapes-sd-lcm`
(its latent consistency distillation: sample it with `--sampler LCM --steps 4`). Torch-free."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED = {"shapes-sd": ASSETS / "shapes-sd", "shapes-sd-lcm": ASSETS / "shapes-sd-lcm"}


def model_location(model: str | Path | None) -> Path:
    """The path of `model`: a path as given, or a shipped model's folder when `model` is one of
    their names and no such path exists here (None: the default, shapes-sd)."""
    if model is None:
        return SHIPPED["shapes-sd"]
    path = Path(model).expanduser()
    if not path.exists() and str(model) in SHIPPED:
        return SHIPPED[str(model)]
    return path
