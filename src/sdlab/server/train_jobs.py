"""Job kind `train`: a short LoRA or textual-inversion run (sdlab.training) on uploaded images.

The loss reaches the page through the callback contract (StepEvent.metrics["loss"]) like any
other progress. The run folder is `training/<job id>/` in the output folder (checkpoints, logs,
the trained weights); a resumed job continues from its latest checkpoint.
"""

from __future__ import annotations

from .jobs import JobContext, register_kind

METHOD_ARGS = {"alpha": None, "train_text_encoder": False, "num_vectors": 1, "templates": "object"}


@register_kind("train")
def run_train(ctx: JobContext) -> dict:
    from ..training.config import TrainingConfig
    from ..training.loop import train
    from ..training.methods import build_method

    p, out_dir = ctx.params, ctx.settings.output_dir
    method, defaults = build_method(p["method"], {**METHOD_ARGS, "rank": p["rank"], "placeholder": p["placeholder"],
                                                  "initializer": p["initializer"],
                                                  "targets": p.get("lora_targets", "attention")})
    run_dir = out_dir / "training" / ctx.job["id"]
    config = TrainingConfig(
        method=p["method"], data_dir=str(ctx.settings.upload_dir / p["data"]), output_dir=str(run_dir),
        model=None if ctx.settings.model is None else str(ctx.settings.model), instance_prompt=p["instance_prompt"],
        max_steps=p["max_steps"], learning_rate=p.get("learning_rate") or defaults["learning_rate"],
        adam_weight_decay=defaults["weight_decay"], seed=p["seed"], checkpoint_every=max(p["max_steps"] // 4, 10),
        keep_last=1, options=defaults["options"])
    result = train(config, method, resume="latest", callback=ctx.callback(), cancel=ctx.cancel)
    return {"steps": result.step, "losses": result.losses, "method": p["method"],
            "saved": [path.relative_to(out_dir).as_posix() for path in result.saved]}
