"""Job kind `train`: a short LoRA or textual-inversion run (sdlab.training) on uploaded images.

The loss reaches the page through the callback contract (StepEvent.metrics["loss"]) like any
other progress. The run folder is `training/<job id>/` in the output folder (checkpoints, logs,
the trained weights); a resumed job continues from its latest checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError
from ..io.paths import safe_component
from .jobs import JobContext, register_kind


@register_kind("train")
def run_train(ctx: JobContext) -> dict:
    from ..training.loop import train
    from ..training.methods import registry

    p, out_dir = ctx.params, ctx.settings.output_dir
    spec = registry.get(p["method"])
    options = spec.studio_options(p)
    run_dir = out_dir / "training" / safe_component(ctx.job["id"], "job id")
    data_dir = ctx.settings.upload_dir / safe_component(p["data"], "data")
    lr = {"learning_rate": p["learning_rate"]} if p.get("learning_rate") else {}
    model = None if ctx.settings.model is None else str(ctx.settings.model)
    steps = p.get("max_steps") or spec.defaults(model)["max_steps"]          # unset: the measured recipe
    config = spec.config(
        options, data_dir=str(data_dir), output_dir=str(run_dir), model=model, instance_prompt=p["instance_prompt"],
        max_steps=steps, seed=p["seed"], checkpoint_every=max(steps // 4, 10), keep_last=1, **lr)
    result = train(config, spec.build(options), resume="latest", callback=ctx.callback(), cancel=ctx.cancel)
    return {"steps": result.step, "losses": result.losses, "method": p["method"],
            "saved": [path.relative_to(out_dir).as_posix() for path in result.saved]}


RESULT_FILES = ("lora_kohya.safetensors", "learned_embeds.safetensors")


def trained_result(output_dir: Path, job_id: str) -> Path:
    """The LoRA or embedding file a finished train job saved (ConfigError if there is none)."""
    run = output_dir / "training" / safe_component(job_id, "trained")
    for name in RESULT_FILES:
        if (run / name).is_file():
            return run / name
    raise ConfigError(f"trained: no finished training run {job_id!r} (train a LoRA or an embedding first)")


@contextmanager
def trained_applied(pipe, output_dir: Path, job_id: str | None, scale: float):
    """A LoRA merged into `pipe` for the job and taken out after it; an embedding's token
    added (or its vectors replaced, when an earlier run used the same token) and kept."""
    handle = None
    if job_id is not None:
        path = trained_result(output_dir, job_id)
        if path.name == "learned_embeds.safetensors":
            pipe.load_embedding(path, replace=True)
        else:
            handle = pipe.load_lora(path, scale)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
