"""The `merge` job kind: A1111's Checkpoint Merger (sdlab.models.merge) over the models and LoRA
files of the server's --merge-dir, written into OUTPUT_DIR/models/ under a name of one path
component; an output that exists is refused, never replaced."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..io.paths import exists_message, find_offered, offered_names, safe_component
from .jobs import JobContext, register_kind

MODELS_FOLDER = "models"        # merges go to OUTPUT_DIR/models/NAME


def mergeable(entry: Path) -> bool:
    """A diffusers model folder or a .safetensors file (a model or a LoRA; sdlab merges no pickles)."""
    if entry.is_dir():
        return (entry / "model_index.json").is_file()
    return entry.suffix.lower() == ".safetensors"


def merge_names(settings) -> list[str]:
    return offered_names(settings.merge_dirs, mergeable)


def merge_inputs(params: dict, settings) -> tuple[dict, Path]:
    """({"a": path, "b": path, "c": path or None}, output path) of a merge job; ConfigError for a
    name the server does not offer, an output name that is not one path component, or one that exists,
    and for a mode that does not fit the models given (C for add-difference only)."""
    from ..models.merge import check_options

    check_options(params["alpha"], params["mode"], params.get("c") or None)
    paths = {k: None if not params.get(k) else find_offered(params[k], settings.merge_dirs, mergeable,
                                                            "model", "sdlab serve --merge-dir")
             for k in ("a", "b", "c")}
    name = safe_component(params["name"], "name")
    if paths["a"].is_file() and not name.endswith(".safetensors"):
        name += ".safetensors"
    out = settings.output_dir / MODELS_FOLDER / name
    if out.exists() or out.is_symlink():
        raise ConfigError(exists_message(f"{MODELS_FOLDER}/{name}", "name"))
    return paths, out


@register_kind("merge")
def run_merge(ctx: JobContext) -> dict:
    """Merge the job's models (one progress step per tensor) into OUTPUT_DIR/models/NAME."""
    from ..models.merge import merge

    paths, out = merge_inputs(ctx.params, ctx.settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    p = ctx.params
    result = merge(paths["a"], paths["b"], out, alpha=p["alpha"], mode=p["mode"], c=paths["c"],
                   callback=ctx.callback(), cancel=ctx.cancel)
    return {"path": f"{MODELS_FOLDER}/{out.name}", "kind": result.kind, "tensors": result.tensors,
            "mode": p["mode"], "alpha": p["alpha"]}
