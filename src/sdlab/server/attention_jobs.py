"""Job kinds for attention studies: `attend` (cross-attention maps per token, Hertz et al. 2022,
sdlab.attention.store) and `edit` (prompt-to-prompt, sdlab.attention.edit).

Images with metadata go into the output folder like txt2img results (running numbers, so they
show in the gallery); an attend job's overlays and grid go into `attention/<image stem>/`,
written as one folder (atomic_dir).
"""

from __future__ import annotations

from dataclasses import replace

from ..attention.edit import EditConfig, build_controller
from ..io.atomic import atomic_dir
from ..io.outputs import save_result
from .jobs import JobContext, register_kind
from .runners import file_links, generation_config

EDIT_FIELDS = ("mode", "cross_replace", "self_replace", "reweight", "blend", "blend_threshold")


def edit_config(params: dict) -> EditConfig:
    return EditConfig(**{k: params[k] for k in EDIT_FIELDS if k in params})


def check_edit(pipe, params: dict) -> None:
    """Raise the ConfigError an edit would raise (bad words, token counts) without sampling:
    the prompt-to-prompt tables only need the tokenizer."""
    source = params["source"]
    target = source if params.get("target") is None else params["target"]
    build_controller(pipe.c.tokenizer, source, target, edit_config(params), params["steps"],
                     guidance=pipe.cfg_scale_for(params["cfg_scale"]) != 1)


@register_kind("attend")
def run_attend(ctx: JobContext) -> dict:
    from ..attention.maps import attention_figure, token_labels
    from ..attention.store import attend

    config = generation_config({**ctx.params, "batch_size": 1, "batch_count": 1})
    result, maps = attend(ctx.pipe, config, places=ctx.params.get("layers", ("down", "mid", "up")),
                          callback=ctx.callback(), cancel=ctx.cancel)
    tokens = token_labels(ctx.pipe.c.tokenizer, config.prompt)
    overlays, grid = attention_figure(result.images[0], maps[0], tokens)
    out_dir = ctx.settings.output_dir
    with ctx.save_lock:
        image = save_result(result, out_dir, grid=False)[0]
        folder = out_dir / "attention" / image.stem
        names = [f"token{t.position:02d}.png" for t in tokens]
        with atomic_dir(folder) as tmp:
            for name, ov in zip(names, overlays):
                ov.save(tmp / name, format="PNG")
            grid.save(tmp / "grid.png", format="PNG")
    files = file_links([folder / n for n in names], out_dir)
    return {"image": {**file_links([image], out_dir)[0], "seed": result.seeds[0], "infotext": result.infotexts[0]},
            "tokens": [{"position": t.position, "text": t.text, **f} for t, f in zip(tokens, files)],
            "grid": file_links([folder / "grid.png"], out_dir)[0], "layers": list(ctx.params.get("layers", []))}


@register_kind("edit")
def run_edit(ctx: JobContext) -> dict:
    from ..attention.edit import edit
    from ..pipeline import GenerationResult

    p, pipe = ctx.params, ctx.pipe
    config = generation_config({**p, "prompt": p["source"], "batch_size": 1, "batch_count": 1})
    r = edit(pipe, p["source"], p.get("target"), config=config, edit=edit_config(p), callback=ctx.callback(),
             cancel=ctx.cancel)
    w, h = r.source_image.size
    infos = [pipe.infotext(config, r.seed, w, h), pipe.infotext(replace(config, prompt=r.target_prompt), r.seed, w, h)]
    settings = [{**r.settings, "mode": "edit-source"},
                {**r.settings, "mode": "edit-target", "prompt": r.target_prompt, "source_prompt": r.source_prompt}]
    result = GenerationResult([r.source_image, r.target_image], [r.seed, r.seed], infos, settings)
    out_dir = ctx.settings.output_dir
    with ctx.save_lock:
        paths = save_result(result, out_dir, grid=False)
    source, target = ({**f, "seed": r.seed, "infotext": t, "prompt": pr}
                      for f, t, pr in zip(file_links(paths, out_dir), infos, (r.source_prompt, r.target_prompt)))
    return {"source": source, "target": target, "edit": r.settings["edit"]}
