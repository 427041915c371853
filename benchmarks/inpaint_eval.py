"""The oracle acceptance of inpainting and outpainting (issue 21) on a shapes-world model.

    python benchmarks/inpaint_eval.py --n 64 [--model PATH] [--shapes circle,square,...] [--out FILE | --results]

- inpaint: rendered two-object scenes; one object (alternately the first and the second) is
  masked by its box (the pixels where the scene differs from the scene without it, boxed and
  grown by --margin) and repainted with the caption of the scene where that object has another
  shape (even scenes) or another colour (odd scenes). Reported: the new object right (the oracle
  reads, nearest the masked object's place, the asked shape and colour; target >= 0.80), the
  other object the same (shape, colour, size and position as read in the source; >= 0.95), and
  the PSNR outside the blurred mask of the loop's own decoded image (before the pixel composite)
  against the VAE round trip of the source (>= 40 dB); the composite itself keeps those pixels
  exactly (the share of images where it does is reported too).
- outpaint: single-object scenes cut by --expand (left 16, top 8 by default) and grown back
  to 64x64 by outpainting with their full caption: the original area's PSNR (composite, and the
  loop's own decoding against the VAE round trip), the share of new border pixels nearest to the
  scene's background colour, and the share of images the oracle reads with the scene's
  background and object and nothing else (a consistent background).
`--results` writes the report to benchmarks/results/inpaint_eval.json, this experiment's one
current result: a newer run replaces it.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from report import result_file, save_example_grid
from sdlab.config import GenerationConfig
from sdlab.evaluate import emit_report
from sdlab.inpaint import INPAINT_STRENGTH, Expand, InpaintConfig, inpaint_latents, prepare
from sdlab.world import oracle, spec
from sdlab.world.captions import full_caption
from sdlab.world.render import render
from sdlab.world.scene import Scene, SceneSampler

SEED0 = 40_000
TARGETS = {"new_right": 0.80, "other_same": 0.95, "psnr_outside_db": 40.0}
ATTRS = ("shape", "color", "size", "position")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, 8-bit) between two equal-shaped pixel arrays; inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255 ** 2 / mse) if mse > 0 else float("inf")


def object_mask(scene: Scene, index: int, margin: int) -> Image.Image:
    """White on the box of object `index` (where the scene differs from the scene without it),
    grown by `margin` pixels: room for another shape."""
    rest = Scene(scene.background, tuple(o for i, o in enumerate(scene.objects) if i != index))
    diff = np.abs(np.asarray(render(scene), np.int16) - np.asarray(render(rest), np.int16)).max(-1) > 0
    ys, xs = np.nonzero(diff)
    mask = Image.new("L", diff.shape[::-1], 0)
    mask.paste(255, (max(xs.min() - margin, 0), max(ys.min() - margin, 0), xs.max() + 1 + margin,
                     ys.max() + 1 + margin))
    return mask


def edited(scene: Scene, index: int, kind: str, shapes, rng: random.Random) -> Scene:
    """`scene` with object `index` given another shape (kind "shape") or colour (kind "color",
    not the background's nor the other object's)."""
    obj, other = scene.objects[index], scene.objects[1 - index]
    if kind == "shape":
        obj = replace(obj, shape=rng.choice([s for s in shapes if s != obj.shape]))
    else:
        taken = {obj.color, other.color, scene.background}
        obj = replace(obj, color=rng.choice([c for c in spec.COLORS if c not in taken]))
    objects = list(scene.objects)
    objects[index] = obj
    return replace(scene, objects=tuple(objects))


def two_object_scenes(n: int, shapes, seed: int = 11) -> list[Scene]:
    """Two different named solid objects side by side or stacked (no counted pairs)."""
    sampler = SceneSampler(split="train", two_object_prob=1.0, count_prob=0.0, generic_prob=0.0, shapes=tuple(shapes))
    rng = random.Random(seed)
    return [sampler.sample(rng) for _ in range(n)]


def nearest(reading, center) -> object:
    """The object of `reading` whose centre is nearest `center` (None when there is none)."""
    if not reading.objects:
        return None
    return min(reading.objects, key=lambda o: (o.center[0] - center[0]) ** 2 + (o.center[1] - center[1]) ** 2)


def _same(a, b) -> bool:
    return a is not None and b is not None and all(getattr(a, k) == getattr(b, k) for k in ATTRS)


def _run(pipe, config: GenerationConfig, image: Image.Image, mask: Image.Image, options: InpaintConfig):
    """(composite, the loop's own decoded image, the VAE round trip of `image`, the prepared job)."""
    from sdlab.inpaint import composite
    from sdlab.inpaint.run import image_tensor

    prep = prepare(image, mask, options, image.size)
    raw = pipe.decode_images(inpaint_latents(pipe, config, prep, options, [config.seed]))[0]
    round_trip = pipe.decode_images(pipe.encode_image(image_tensor(prep.source).to(pipe.device)))[0]
    return composite(prep, raw), raw, round_trip, prep


def score_inpaint(scene: Scene, index: int, target: Scene, out: Image.Image) -> dict:
    """new_right: the oracle reads two objects in `out`, the one nearest the masked object's place
    with the target's shape and colour; other_same: the other object reads as in the source."""
    before, after = oracle.read(render(scene)), oracle.read(out)
    other_before = nearest(before, scene.objects[1 - index].center)
    new = nearest(after, scene.objects[index].center)
    other_after = nearest(after, other_before.center) if other_before else None
    want = target.objects[index]
    return {"new_right": new is not None and len(after.objects) == 2 and new is not other_after
            and (new.shape, new.color) == (want.shape, want.color),
            "other_same": other_after is not new and _same(other_before, other_after)}


def inpaint_eval(pipe, n: int, config: GenerationConfig, options: InpaintConfig, shapes, margin: int,
                 examples: list) -> dict:
    rng = random.Random(3)
    rows = []
    for i, scene in enumerate(two_object_scenes(n, shapes)):
        index, kind = i % 2, ("shape", "color")[(i // 2) % 2]
        target = edited(scene, index, kind, shapes, rng)
        source, mask = render(scene), object_mask(scene, index, margin)
        out, raw, round_trip, prep = _run(pipe, replace(config, prompt=full_caption(target), seed=SEED0 + i),
                                          source, mask, options)
        outside = np.asarray(prep.overlay) == 0
        rows.append({"kind": kind, **score_inpaint(scene, index, target, out),
                     "psnr_outside_db": psnr(np.asarray(raw)[outside], np.asarray(round_trip)[outside]),
                     "composite_exact_outside": bool(np.array_equal(np.asarray(out)[outside],
                                                                    np.asarray(source)[outside]))})
        examples.append((source, mask.convert("RGB"), out))
    return _summary(rows) | {"by_kind": {k: _summary([r for r in rows if r["kind"] == k]) for k in ("shape", "color")}}


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    db = [r["psnr_outside_db"] for r in rows]
    return {"n": len(rows), "new_right": _mean(r["new_right"] for r in rows),
            "other_same": _mean(r["other_same"] for r in rows),
            "psnr_outside_db": round(float(np.median(db)), 2), "psnr_outside_db_min": round(float(min(db)), 2),
            "composite_exact_outside": _mean(r["composite_exact_outside"] for r in rows)}


def _mean(values) -> float:
    return round(float(np.mean(list(values))), 4)


def outpaint_scenes(n: int, expand: Expand, shapes, seed: int = 12) -> list[Scene]:
    """Single named objects that lie wholly inside the part the cut keeps."""
    sampler = SceneSampler(split="train", two_object_prob=0.0, generic_prob=0.0, shapes=tuple(shapes),
                           fills=("solid",), fill_weights=None)
    rng, out = random.Random(seed), []
    while len(out) < n:
        scene = sampler.sample(rng)
        x0, y0, x1, y1 = oracle.read(render(scene)).main.bbox
        size = spec.IMAGE_SIZE
        if x0 >= expand.left + 2 and y0 >= expand.top + 2 and x1 <= size - expand.right - 2 \
                and y1 <= size - expand.bottom - 2:
            out.append(scene)
    return out


def outpaint_eval(pipe, n: int, config: GenerationConfig, options: InpaintConfig, shapes, expand: Expand,
                  examples: list) -> dict:
    from sdlab.inpaint import expand_canvas

    size, rows = spec.IMAGE_SIZE, []
    keep = (expand.left, expand.top, size - expand.right, size - expand.bottom)
    for i, scene in enumerate(outpaint_scenes(n, expand, shapes)):
        full = render(scene)
        cut = full.crop(keep)
        canvas, mask = expand_canvas(cut, expand)
        out, raw, round_trip, prep = _run(pipe, replace(config, prompt=full_caption(scene), seed=SEED0 + i),
                                          canvas, mask, replace(options, invert_mask=False))
        out.paste(cut, keep[:2])                    # as Pipeline.outpaint: the original area pasted back
        border = np.asarray(mask) > 0
        arr = np.asarray(out, np.float32)
        palette = np.array(list(spec.COLORS.values()), np.float32)
        nearest_colour = ((arr[..., None, :] - palette) ** 2).sum(-1).argmin(-1)
        reading, want = oracle.read(out), scene.objects[0]
        inner = (slice(keep[1], keep[3]), slice(keep[0], keep[2]))
        rows.append({
            "original_exact": bool(np.array_equal(np.asarray(out)[inner], np.asarray(cut))),
            "psnr_original_loop_db": psnr(np.asarray(raw)[inner], np.asarray(round_trip)[inner]),
            "border_background": float((nearest_colour[border] == list(spec.COLORS).index(scene.background)).mean()),
            "consistent": reading.background == scene.background and len(reading.objects) == 1
            and (reading.main.shape, reading.main.color) == (want.shape, want.color)})
        examples.append((full, canvas, out))
    db = [r["psnr_original_loop_db"] for r in rows]
    return {"n": len(rows), "expand": str(expand), "original_exact": _mean(r["original_exact"] for r in rows),
            "psnr_original_loop_db": round(float(np.median(db)), 2),
            "border_background": _mean(r["border_background"] for r in rows),
            "consistent": _mean(r["consistent"] for r in rows)}


def table(report: dict) -> str:
    ip, op = report["inpaint"], report["outpaint"]
    rows = ["| measure | value | target |", "|---|---|---|",
            f"| inpaint: new object right (n={ip['n']}) | {ip['new_right']:.2f} | >= {TARGETS['new_right']} |",
            f"| ... shape asked | {ip['by_kind']['shape'].get('new_right', float('nan')):.2f} | |",
            f"| ... colour asked | {ip['by_kind']['color'].get('new_right', float('nan')):.2f} | |",
            f"| inpaint: other object the same | {ip['other_same']:.2f} | >= {TARGETS['other_same']} |",
            f"| inpaint: PSNR outside the blurred mask, loop vs VAE round trip (median / min) | "
            f"{ip['psnr_outside_db']:.1f} / {ip['psnr_outside_db_min']:.1f} dB | >= {TARGETS['psnr_outside_db']:g} dB |",
            f"| inpaint: composite equals the source outside the blurred mask | {ip['composite_exact_outside']:.2f} | 1 |",
            f"| outpaint ({op['expand']}, n={op['n']}): original area kept exactly | {op['original_exact']:.2f} | 1 |",
            f"| outpaint: original area PSNR, loop vs VAE round trip (median) | {op['psnr_original_loop_db']:.1f} dB | |",
            f"| outpaint: new border pixels of the background colour | {op['border_background']:.2f} | |",
            f"| outpaint: reads as the scene (background, one object) | {op['consistent']:.2f} | |"]
    return "\n".join(rows)



def evaluate(pipe, n: int = 64, steps: int = 25, cfg_scale: float | None = None, sampler: str = "Euler a",
             strength: float = INPAINT_STRENGTH, options: InpaintConfig = InpaintConfig(),
             shapes=spec.BASE_SHAPES, margin: int = 3, expand: Expand = Expand(left=16, top=8),
             examples_dir=None) -> dict:
    cfg_scale = pipe.cfg_scale_for(cfg_scale)          # unset: the model's recommended scale
    config = GenerationConfig("", steps=steps, cfg_scale=cfg_scale, sampler=sampler, strength=strength)
    report = {"model": pipe.c.name, "model_hash": pipe.c.model_hash, "n": n, "steps": steps, "cfg_scale": cfg_scale,
              "sampler": sampler, "strength": strength, "options": options.to_dict(), "shapes": list(shapes),
              "margin": margin, "targets": TARGETS}
    t, examples = time.time(), []
    report["inpaint"] = inpaint_eval(pipe, n, config, options, shapes, margin, examples)
    report["outpaint"] = outpaint_eval(pipe, n, config, options, shapes, expand, examples)
    report["seconds"] = round(time.time() - t, 1)
    if examples_dir:
        save_example_grid(examples, Path(examples_dir) / "inpaint_examples.png")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/inpaint_eval.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--n", type=int, default=64, help="scenes for each of inpaint and outpaint (default 64)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the model's recommended scale")
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--strength", type=float, default=INPAINT_STRENGTH,
                   help=f"denoising strength (default {INPAINT_STRENGTH:g}, sdlab inpaint's)")
    p.add_argument("--masked-content", default=InpaintConfig.masked_content,
                   help=f"A1111's masked content (default {InpaintConfig.masked_content}, sdlab inpaint's)")
    p.add_argument("--mask-blur", type=int, default=InpaintConfig.mask_blur)
    p.add_argument("--margin", type=int, default=3, help="pixels the object's box mask is grown by (default 3)")
    p.add_argument("--shapes", default=",".join(spec.BASE_SHAPES),
                   help="comma-separated shapes scenes and edits use (default: the world's base shapes)")
    p.add_argument("--expand", default="left=16,top=8", help="outpainting cut and growth (default left=16,top=8)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="write the JSON report here")
    out.add_argument("--results", action="store_true",
                     help="write the JSON report to benchmarks/results/inpaint_eval.json, this experiment's one "
                          "current result (a newer run replaces the file an earlier run of this script wrote)")
    p.add_argument("--examples", default=None, help="folder for an example grid (source | mask | result)")
    args = p.parse_args(argv)
    from sdlab.pipeline import Pipeline

    shapes = tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    unknown = [s for s in shapes if s not in spec.BASE_SHAPES]
    if len(shapes) < 2 or unknown:
        p.error(f"--shapes takes at least two of {', '.join(spec.BASE_SHAPES)}; got {args.shapes!r}")
    options = InpaintConfig(mask_blur=args.mask_blur, masked_content=args.masked_content)
    report = evaluate(Pipeline.load(args.model), n=args.n, steps=args.steps, cfg_scale=args.cfg_scale,
                      sampler=args.sampler, strength=args.strength, options=options, shapes=shapes,
                      margin=args.margin, expand=Expand.parse(args.expand), examples_dir=args.examples)
    emit_report(report, result_file(__file__) if args.results else args.out)
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
