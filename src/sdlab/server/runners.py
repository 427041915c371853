"""Job kinds of the generation studio: txt2img (with a ControlNet or not), img2img, inpaint and the
X/Y/Z grid. Each is one registered runner.

Other kinds register the same way, `@register_kind("name") def run(ctx) -> dict`: attention
maps and prompt-to-prompt edits (attention_jobs.py), training (train_jobs.py).
"""

from __future__ import annotations

from pathlib import Path

from ..config import GenerationConfig
from ..errors import ConfigError
from ..io.outputs import save_result
from .jobs import JobContext, register_kind

GENERATION_FIELDS = GenerationConfig.field_names()


def generation_config(params: dict) -> GenerationConfig:
    """GenerationConfig from stored job params (unknown keys ignored; ConfigError on bad values)."""
    return GenerationConfig(**{k: v for k, v in params.items() if k in GENERATION_FIELDS})


def check_hires_side(config: GenerationConfig, pipe, max_side: int) -> None:
    """A hires fix's output size within the server's --max-side (ConfigError naming both)."""
    from ..errors import ConfigError
    from ..sampling.hires import enabled, hires_size

    if enabled(config):
        size = hires_size(config, *pipe.size(config))
        if max(size) > max_side:
            raise ConfigError(f"the hires fix would make {size[0]}x{size[1]} images, past this server's largest "
                              f"side {max_side}; lower hires_scale")


def file_links(paths: list[Path], out_dir: Path) -> list[dict]:
    return [{"name": p.name, "url": f"/files/{p.relative_to(out_dir).as_posix()}"} for p in paths]


def _generate(ctx: JobContext, init_image=None, make=None) -> dict:
    """Run the job's generation (`make(config, **loop)`, default Pipeline.generate), save its images."""
    from .train_jobs import trained_applied

    config = generation_config(ctx.params)
    check_hires_side(config, ctx.pipe, ctx.settings.max_side)
    with trained_applied(ctx.pipe, ctx.settings.output_dir, ctx.params.get("trained"),
                         ctx.params.get("trained_scale", 1.0)):
        make = make or (lambda config, **loop: ctx.pipe.generate(config, init_image=init_image, **loop))
        result = make(config, callback=ctx.callback(config.batch_count), cancel=ctx.cancel)
    out_dir = ctx.settings.output_dir
    with ctx.save_lock:  # running numbers in the folder: one writer at a time
        paths = save_result(result, out_dir, grid=len(result.images) > 1)
    images = [{**f, "seed": s, "infotext": t}
              for f, s, t in zip(file_links(paths, out_dir), result.seeds, result.infotexts)]
    grid = file_links(paths[len(images):], out_dir)
    return {"images": images, "grid": grid[0] if grid else None}


def control_units(params: dict, settings) -> list:
    """The job's Control units (sdlab.control): [] without a control image, else one from the
    uploaded image and the ControlNet named from --controlnet-dir (ConfigError: unknown name, bad values)."""
    if not params.get("control_image"):
        return []
    from ..control import Control
    from ..io.images import load_image
    from ..io.paths import find_offered
    from ..models.vae_file import weights_entry

    image = load_image(settings.upload_dir / Path(params["control_image"]).name, max_pixels=settings.max_upload_pixels,
                       what="control image")
    net = find_offered(params["controlnet"], settings.controlnet_dirs, weights_entry, "ControlNet",
                       "sdlab serve --controlnet-dir")
    return [Control(image, str(net), scale=params["control_scale"], start=params["control_start"],
                    end=params["control_end"], guess_mode=params["guess_mode"], module=params["control_type"])]


@register_kind("txt2img")
def run_txt2img(ctx: JobContext) -> dict:
    """txt2img; with a control image, through the ControlNet the job names."""
    controls = control_units(ctx.params, ctx.settings)
    return _generate(ctx, make=lambda config, **loop: ctx.pipe.generate(config, controls=controls, **loop))


def grid_axes(params: dict, settings) -> dict:
    """{"x": Axis, ...} of a grid job's axes; ConfigError for a bad axis, more than MAX_GRID_CELLS
    cells, or a cell past the limits of a single job (the HTTP bounds, --max-side)."""
    import dataclasses

    from pydantic import ValidationError

    from ..sampling.xyz_grid import as_axis, plan_cells
    from .schemas import MAX_GRID_CELLS, GenerateRequest

    axes = {k: as_axis(params[k]) for k in "xyz" if params.get(k)}
    cells = plan_cells(generation_config({**params, "batch_size": 1, "batch_count": 1}), axes,
                       vary_seeds=params.get("vary_seeds", False))
    if len(cells) > MAX_GRID_CELLS:
        raise ConfigError(f"the grid has {len(cells)} cells; this server draws at most {MAX_GRID_CELLS} per grid")
    for cell in cells:
        fields = {k: v for k, v in dataclasses.asdict(cell.config).items() if k in GenerateRequest.model_fields}
        try:
            GenerateRequest.model_validate(fields)
        except ValidationError as err:
            first = err.errors()[0]
            raise ConfigError(f"grid cell {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        for side, value in zip(("width", "height"), (cell.config.width, cell.config.height)):
            if value is not None and value > settings.max_side:
                raise ConfigError(f"grid cell {side} must be at most {settings.max_side} on this server, got {value}")
    return axes


@register_kind("grid")
def run_grid(ctx: JobContext) -> dict:
    """An X/Y/Z plot (sdlab.sampling.xyz_grid): every cell's image and the labelled grid."""
    from ..io.grids import save_grid
    from ..sampling.xyz_grid import xyz_grid
    from .train_jobs import trained_applied

    axes, out_dir = grid_axes(ctx.params, ctx.settings), ctx.settings.output_dir
    config = generation_config({**ctx.params, "batch_size": 1, "batch_count": 1})
    with trained_applied(ctx.pipe, out_dir, ctx.params.get("trained"), ctx.params.get("trained_scale", 1.0)):
        result = xyz_grid(ctx.pipe, config, *(axes.get(k) for k in "xyz"),
                          vary_seeds=ctx.params.get("vary_seeds", False), callback=ctx.callback(), cancel=ctx.cancel)
    with ctx.save_lock:
        paths = save_grid(result, out_dir)
    cells = [{**f, "seed": c.config.seed, "infotext": c.result.infotexts[0], "x": c.x, "y": c.y, "z": c.z}
             for f, c in zip(file_links(paths, out_dir), result.cells)]
    return {"images": cells, "grid": file_links(paths[-1:], out_dir)[0],
            "axes": {k: {"name": a.name, "labels": list(a.labels)} for k, a in axes.items()}}


@register_kind("img2img")
def run_img2img(ctx: JobContext) -> dict:
    from ..io.images import load_image

    init = load_image(ctx.settings.upload_dir / Path(ctx.params["init_image"]).name,
                      max_pixels=ctx.settings.max_upload_pixels)
    return _generate(ctx, init_image=init)


def inpaint_inputs(params: dict, settings) -> tuple:
    """(image, mask or None, InpaintConfig, Expand or None) of an inpaint job's stored uploads and
    params; ConfigError for a mask that does not fit the image or leaves nothing to repaint."""
    from ..inpaint import Expand, InpaintConfig, load_mask
    from ..inpaint.masks import prepare_mask
    from ..io.images import load_image

    uploads, limit = settings.upload_dir, settings.max_upload_pixels
    image = load_image(uploads / Path(params["init_image"]).name, max_pixels=limit)
    options = InpaintConfig(**{k: params[k] for k in InpaintConfig.field_names() if k in params})
    if params.get("expand"):
        return image, None, options, Expand.parse(params["expand"])
    if not params.get("mask_image"):
        raise ConfigError("mask: upload a mask (white = repaint), or give expand to outpaint")
    mask = load_mask(uploads / Path(params["mask_image"]).name, max_pixels=limit)
    prepare_mask(mask, image.size, options.invert_mask)
    return image, mask, options, None


@register_kind("inpaint")
def run_inpaint(ctx: JobContext) -> dict:
    """The uploaded image with its mask's white area repainted, or outpainted with `expand`."""
    image, mask, options, expand = inpaint_inputs(ctx.params, ctx.settings)
    if expand is not None:
        return _generate(ctx, make=lambda config, **loop: ctx.pipe.outpaint(config, image, expand, options, **loop))
    return _generate(ctx, make=lambda config, **loop: ctx.pipe.inpaint(config, image, mask, options, **loop))
