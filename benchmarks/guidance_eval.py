"""Measure loss and classifier guidance with the oracle.

    python benchmarks/guidance_eval.py --n 32 [--out report.json | --results]

- colour: the same prompts and seeds without and with colour-loss guidance toward blue; the
  object's mean blue and "blueness" (B - (R + G) / 2) inside the oracle's object mask. Prompts
  name a non-blue colour (`named`: guidance against the prompt) or no colour (`uncoloured`);
- classifier: the empty prompt, without and with classifier guidance toward "triangle"; the
  rate at which the oracle reads a triangle.
`--results` writes the report to benchmarks/results/guidance_eval.json, this experiment's one
current result: a newer run replaces it.
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from report import result_file
from sdlab.config import GenerationConfig
from sdlab.evaluate import emit_report
from sdlab.guidance.classifier import classifier_guidance
from sdlab.guidance.loss import loss_guidance
from sdlab.guidance.losses import color_loss
from sdlab.pipeline import Pipeline
from sdlab.world import oracle, spec
from sdlab.world.captions import article, full_caption, object_phrase
from sdlab.world.prompt_sets import prompt_set

BLUE = (0, 0, 255)


def object_blue(image) -> tuple[float, float] | None:
    """(mean blue, mean B - (R+G)/2) of the first object the oracle finds, or None."""
    image = image.convert("RGB")
    if image.size != (spec.IMAGE_SIZE, spec.IMAGE_SIZE):  # the oracle's masks are at the world's size
        image = image.resize((spec.IMAGE_SIZE, spec.IMAGE_SIZE), Image.Resampling.BILINEAR)
    reading = oracle.read(image)
    if not reading.objects:
        return None
    px = np.asarray(image, dtype=np.float64)[reading.objects[0].mask]
    return float(px[:, 2].mean()), float((px[:, 2] - (px[:, 0] + px[:, 1]) / 2).mean())


def uncoloured_caption(scene) -> str:
    """"a large circle on a white background": the object's colour left to the model."""
    return f"{article(object_phrase(scene.objects[0], color=False))} on a {scene.background} background"


def color_eval(pipe, n: int, scales, steps: int, prompts: str = "named") -> dict:
    scenes = [s for s in prompt_set("seen", 4 * n) if s.objects[0].color != "blue" and s.background != "blue"][:n]
    caption = full_caption if prompts == "named" else uncoloured_caption
    configs = [GenerationConfig(caption(scene), steps=steps, seed=20_000 + i) for i, scene in enumerate(scenes)]
    base = [object_blue(pipe.generate(c).images[0]) for c in configs]
    out = {"prompts": prompts, "example_prompt": configs[0].prompt}
    for scale in scales:
        guided = [object_blue(pipe.generate(c, guidance=[loss_guidance(color_loss(BLUE), scale)]).images[0])
                  for c in configs]
        out[f"scale {scale:g}"] = _blue_summary(n, base, guided)
    return out


def _blue_summary(n: int, base: list, guided: list) -> dict:
    pairs = [(b, g) for b, g in zip(base, guided) if b is not None and g is not None]
    return {"n": n, "pairs_with_objects": len(pairs),
            "object_blue_base": round(float(np.mean([b[0] for b, _ in pairs])), 2),
            "object_blue_guided": round(float(np.mean([g[0] for _, g in pairs])), 2),
            "blueness_base": round(float(np.mean([b[1] for b, _ in pairs])), 2),
            "blueness_guided": round(float(np.mean([g[1] for _, g in pairs])), 2),
            "share_bluer": round(float(np.mean([g[0] > b[0] for b, g in pairs])), 3)}


def classifier_eval(pipe, n: int, scales, steps: int, label: str = "triangle") -> dict:
    out = {"n": n, "label": label, "rates": {}}
    for scale in (0.0, *scales):
        hits = 0
        for i in range(n):
            config = GenerationConfig("", steps=steps, seed=30_000 + i)
            guidance = [classifier_guidance(label, scale)] if scale else []
            reading = oracle.read(pipe.generate(config, guidance=guidance).images[0])
            hits += int(any(o.shape == label for o in reading.objects))
        out["rates"][f"scale {scale:g}"] = round(hits / n, 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/guidance_eval.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--color-scales", type=float, nargs="+", default=[3000.0])
    ap.add_argument("--color-prompts", choices=("named", "uncoloured"), default="named")
    ap.add_argument("--classifier-scales", type=float, nargs="+", default=[4.0, 16.0, 24.0])
    ap.add_argument("--only", choices=("color", "classifier"), default=None)
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="write the JSON report here")
    out.add_argument("--results", action="store_true",
                     help="write the JSON report to benchmarks/results/guidance_eval.json, this experiment's one "
                          "current result (a newer run replaces the file an earlier run of this script wrote)")
    args = ap.parse_args(argv)
    pipe = Pipeline.load(args.model)
    report = {}
    if args.only in (None, "color"):
        report["color"] = color_eval(pipe, args.n, args.color_scales, args.steps, args.color_prompts)
    if args.only in (None, "classifier"):
        report["classifier"] = classifier_eval(pipe, args.n, args.classifier_scales, args.steps)
    emit_report(report, result_file(__file__) if args.results else args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
