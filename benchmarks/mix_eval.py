"""Does mixing the "circle" and "square" token embeddings draw shapes between the two?

For n single-object prompts ("a large blue circle on the left on a black background", colours
whose circle and square were both seen in training) and each weight w, the input embedding of
"circle" is replaced by (1 - w) e(circle) + w e(square) (sdlab.text.embedding_ops) and the image
is sampled with the prompt's own seed, the same for every w. The oracle reads each image:

- shape rates per w (circle / square / other shape / no object);
- squareness = the object's mask area over its bounding-box area: a disc fills pi/4 ~ 0.785
  of its box, a square 1.0 (measured on rendered shapes as the reference);
- how often, per seed, the w=0.5 squareness lies between those of w=0 and w=1, and how often
  w=1 is squarer than w=0 at all (ends_ordered_rate); the mean squareness gain over w=0 on
  the same seed.

    python benchmarks/mix_eval.py --n 32 [--out runs/mix_eval | --results]

`--results` writes the report to benchmarks/results/mix_eval.json, this experiment's one current
result: a newer run replaces it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Sequence

from report import result_file
from sdlab.config import GenerationConfig
from sdlab.evaluate import emit_report
from sdlab.evaluate.masks import squareness
from sdlab.world import oracle, spec
from sdlab.world.captions import full_caption
from sdlab.world.scene import single_object_scene

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
WORDS = ("circle", "square")


def prompts(n: int, size: str = "large", seed: int = 2024) -> list[str]:
    """n full captions of single circles whose colour was seen with both circle and square."""
    rng = random.Random(seed)
    colors = [c for c in spec.COLORS if not {(c, w) for w in WORDS} & spec.HELD_OUT_COMBOS]
    out = []
    for _ in range(n):
        color = rng.choice(colors)
        background = rng.choice([c for c in spec.COLORS if c != color])
        out.append(full_caption(single_object_scene("circle", color, size, rng.choice(list(spec.POSITIONS)),
                                                    background, rng)))
    return out


def reference_squareness(size: str = "large", n: int = 8) -> dict[str, float]:
    """Mean squareness the oracle reads from rendered circles and squares (the ground truth)."""
    from sdlab.world.render import render

    rng, out = random.Random(0), {}
    for shape in WORDS:
        vals = []
        for _ in range(n):
            scene = single_object_scene(shape, "red", size, rng.choice(list(spec.POSITIONS)), "blue", rng)
            vals.append(squareness(oracle.read(render(scene)).main.mask))
        out[shape] = round(statistics.fmean(vals), 4)
    return out


def sample_mix(pipe, texts: Sequence[str], w: float, config: GenerationConfig, seed0: int, batch: int = 8):
    """Images for each prompt with "circle" mixed toward "square" by w; prompt i uses seed0 + i."""
    import torch

    from sdlab.text.embedding_ops import encode_with_overrides, mix

    weights = {WORDS[0]: 1.0 - w, WORDS[1]: w}
    images = []
    for i in range(0, len(texts), batch):
        chunk = texts[i:i + batch]
        cond = torch.cat([encode_with_overrides(pipe, t, {WORDS[0]: mix(weights)}) for t in chunk])
        seeds = [seed0 + i + j for j in range(len(chunk))]
        images += pipe.sample_images(config, seeds, cond=cond)
    return images


def read_images(images) -> list[dict]:
    rows = []
    for im in images:
        obj = oracle.read(im).main
        rows.append({"shape": obj.shape if obj else "none", "squareness": squareness(obj.mask) if obj else float("nan")})
    return rows


def summarize(readings: dict[float, list[dict]]) -> dict:
    """Shape rates and squareness per w, and the per-seed "between" rate of the middle weight."""
    per_w = {}
    for w, rows in readings.items():
        sq = [r["squareness"] for r in rows if r["squareness"] == r["squareness"]]
        counts = {k: sum(r["shape"] == k for r in rows) / len(rows) for k in (*WORDS, "none")}
        counts["other"] = round(1 - sum(counts.values()), 4)
        per_w[f"{w:g}"] = {"rates": {k: round(v, 4) for k, v in counts.items()},
                          "squareness_mean": round(statistics.fmean(sq), 4) if sq else None,
                          "squareness_sem": round(statistics.stdev(sq) / len(sq) ** 0.5, 4) if len(sq) > 1 else None}
    ws = sorted(readings)
    lo, mid, hi = readings[ws[0]], readings[ws[len(ws) // 2]], readings[ws[-1]]
    between = [min(a["squareness"], c["squareness"]) - 1e-9 <= b["squareness"] <= max(a["squareness"], c["squareness"]) + 1e-9
               for a, b, c in zip(lo, mid, hi)]
    means = [per_w[f"{w:g}"]["squareness_mean"] for w in ws]
    for w in ws:  # paired with w=0 on the same seed and prompt
        d = [b["squareness"] - a["squareness"] for a, b in zip(lo, readings[w])]
        d = [x for x in d if x == x]
        per_w[f"{w:g}"]["squareness_gain_vs_w0"] = round(statistics.fmean(d), 4) if d else None
    ordered = [c["squareness"] > a["squareness"] for a, c in zip(lo, hi)]
    return {"per_weight": per_w, "middle_between_ends_rate": round(sum(between) / len(between), 4),
            "ends_ordered_rate": round(sum(ordered) / len(ordered), 4),
            "squareness_monotone": all(a is not None and b is not None and a <= b for a, b in zip(means, means[1:]))}


def evaluate_mix(pipe, n: int = 32, weights: Sequence[float] = WEIGHTS, steps: int = 25, cfg: float | None = None,
                 sampler: str = "Euler a", size: str = "large", seed: int = 5000) -> tuple[dict, dict]:
    """(report, images per w)."""
    texts = prompts(n, size)
    cfg = pipe.cfg_scale_for(cfg)                      # unset: the model's recommended scale
    config = GenerationConfig(texts[0], steps=steps, cfg_scale=cfg, sampler=sampler)
    start, images = time.time(), {}
    for w in weights:
        images[w] = sample_mix(pipe, texts, w, config, seed)
    report = {"n": n, "steps": steps, "cfg": cfg, "sampler": sampler, "size": size, "model": pipe.c.name,
              "model_hash": pipe.c.model_hash, "reference_squareness": reference_squareness(size),
              **summarize({w: read_images(images[w]) for w in weights}),
              "seconds": round(time.time() - start, 1), "example_prompt": texts[0]}
    return report, images


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/mix_eval.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: the shipped model")
    p.add_argument("--n", type=int, default=32, help="prompts (seeds) per weight")
    p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS), help="weights of 'square'")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg", type=float, default=None, help="default: the model's recommended scale")
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--size", choices=tuple(spec.SIZES), default="large")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help="folder for mix_eval.json and mix_eval.png (a grid of 8 seeds)")
    where.add_argument("--results", action="store_true",
                     help="write the JSON report to benchmarks/results/mix_eval.json, this experiment's one "
                          "current result (a newer run replaces the file an earlier run of this script wrote)")
    args = p.parse_args(argv)
    from sdlab.pipeline import Pipeline

    report, images = evaluate_mix(Pipeline.load(args.model), args.n, sorted(args.weights), args.steps, args.cfg,
                                  args.sampler, args.size)
    emit_report(report, result_file(__file__) if args.results else args.out and Path(args.out) / "mix_eval.json")
    if args.out:
        from sdlab.io.atomic import atomic_save
        from sdlab.io.labels import labelled_grid
        from sdlab.io.sweeps import value_labels

        out = Path(args.out)
        ws = sorted(images)
        grid = labelled_grid([[images[w][i] for w in ws] for i in range(min(8, args.n))],
                             col_labels=value_labels(ws, "w"), scale=2)
        atomic_save(out / "mix_eval.png", lambda tmp: grid.save(tmp, format="PNG"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
