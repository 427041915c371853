"""Oracle measurements of cross-attention maps and prompt-to-prompt edits on a shapes-world model.

    python benchmarks/p2p_eval.py --n 64 [--model PATH] [--out report.json | --results] [--examples DIR]

- attention: IoU between the shape word's cross-attention map (min-max normalized, thresholded
  at its mean and by Otsu's method) and the oracle's object mask, per layer resolution and all.
- replace: the shape word swapped with the same seed by prompt-to-prompt (Hertz et al. 2022) vs
  the plain target prompt with the same seed: how often the shape changes, and how often position,
  size and colour (and the object mask, by IoU) stay those of the source image.
- reweight: the colour word's attention scaled by each factor; the colour's area (pixels nearest
  to that palette colour) and the object's saturation, with the fraction of seeds where they
  rise monotonically with the factor.
Scenes are single objects of the training split with their full captions; seeds 20000 + i.
`--results` writes the report to benchmarks/results/p2p_eval.json, this experiment's one current
result: a newer run replaces it.
"""

from __future__ import annotations

import argparse
import random
import re
import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from report import result_file
from sdlab.attention.align import prompt_tokens
from sdlab.attention.edit import EditConfig, edit_batch
from sdlab.attention.maps import normalize, upsample
from sdlab.attention.store import AttentionStore, mean_maps
from sdlab.config import GenerationConfig
from sdlab.evaluate import emit_report
from sdlab.evaluate.masks import iou, otsu_threshold
from sdlab.world import oracle, spec
from sdlab.world.captions import article, full_caption, object_phrase
from sdlab.world.scene import SceneSampler

SEED0 = 20_000
KEPT = ("position", "size", "color")


def short_caption(scene) -> str:
    """Colour and shape only ("a red circle"): size, position and background are left to the seed."""
    return article(object_phrase(scene.objects[0], size=False))


def sized_caption(scene) -> str:
    """Size, colour and shape ("a large red circle"): position and background left to the seed."""
    return article(object_phrase(scene.objects[0]))


CAPTIONS = {"full": full_caption, "short": short_caption, "sized": sized_caption}


def swappable_shapes(tokenizer) -> tuple[str, ...]:
    """The named shapes whose word is one token: prompt-to-prompt's replace swaps a word for one of
    as many tokens (SD's vocabulary splits "hourglass" and "semicircle")."""
    return tuple(s for s in spec.BASE_SHAPES if len(tokenizer(s, add_special_tokens=False).input_ids) == 1)


def scenes_for(n: int, shapes: tuple[str, ...] = spec.BASE_SHAPES, seed: int = 5) -> list:
    """`n` single named objects of `shapes` (no unnamed silhouettes: no word to swap)."""
    rng = random.Random(seed)
    sampler = SceneSampler(split="train", two_object_prob=0.0, generic_prob=0.0, shapes=shapes)
    return [sampler.sample(rng) for _ in range(n)]


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield range(i, min(n, i + size))


def _generate(pipe, config, prompts, first_seed, attention=None):
    """Images of `prompts`, prompt j with seed first_seed + j, in one batch."""
    cfg = replace(config, prompt=prompts[0], seed=first_seed, batch_size=len(prompts))
    return pipe.generate(cfg, cond=pipe.encode_prompt(prompts), attention=attention).images


def _map_ious(maps: torch.Tensor, position: int, mask: np.ndarray) -> dict:
    heat = normalize(upsample(maps[..., position], (mask.shape[1], mask.shape[0]))).numpy()
    return {"mean": iou(heat > heat.mean(), mask), "otsu": iou(heat > otsu_threshold(heat), mask)}


class _SplitStore(AttentionStore):
    """An AttentionStore that also keeps sums per (place, resolution, late half of the steps)."""

    def __init__(self, steps: int, **kw):
        super().__init__(**kw)
        self.total_steps, self.parts = steps, {}

    def forward(self, probs, is_cross, place_in_unet, layer):
        if is_cross:
            hw = self.resolution(layer.queries)
            key = (place_in_unet, hw, self.step >= self.total_steps // 2)
            s, c = self.parts.get(key, (0, 0))
            self.parts[key] = (s + probs.float().mean(dim=1).cpu(), c + 1)
        return super().forward(probs, is_cross, place_in_unet, layer)

    def views(self) -> dict:
        """Maps averaged over named subsets of layers and steps."""
        filters = {"all": lambda p, hw, late: True, "late_steps": lambda p, hw, late: late,
                   "down": lambda p, hw, late: p == "down", "up": lambda p, hw, late: p == "up",
                   "up_late": lambda p, hw, late: p == "up" and late}
        for hw in {k[1] for k in self.parts}:
            filters[f"{hw[0]}x{hw[1]}"] = lambda p, r, late, hw=hw: r == hw
        out = {}
        for name, keep in filters.items():
            parts = [(k[1], s, c) for k, (s, c) in self.parts.items() if keep(*k)]
            if parts:
                out[name] = mean_maps(parts)
        return out


def attention_eval(pipe, scenes, config, batch: int, caption=full_caption) -> tuple[dict, list]:
    """IoU of the shape word's map (several layer/step subsets) with the oracle mask; also returns
    the (plain) source images."""
    tok, images, scores = pipe.c.tokenizer, [], {}
    for idx in _chunks(len(scenes), batch):
        prompts = [caption(scenes[i]) for i in idx]
        store = _SplitStore(config.steps, batch_size=len(prompts))
        out = _generate(pipe, config, prompts, SEED0 + idx[0], attention=store)
        images += out
        views = store.views()
        for j, (i, image) in enumerate(zip(idx, out)):
            obj = oracle.read(image).main
            if obj is None:
                continue
            pos = prompt_tokens(tok, prompts[j]).positions(scenes[i].objects[0].shape)[0]
            for name, maps in views.items():
                for kind, v in _map_ious(maps[j], pos, obj.mask).items():
                    scores.setdefault(f"{name}/{kind}", []).append(v)
    report = {k: round(float(np.mean(v)), 4) for k, v in sorted(scores.items())}
    report["n_with_object"] = len(scores.get("all/mean", []))
    return report, images


def _swap_shape(prompt: str, old: str, new: str) -> str:
    return re.sub(rf"\b{old}\b", new, prompt, count=1)


def _compare(src, tgt, wanted: str) -> dict | None:
    if src is None or tgt is None:
        return None
    row = {"shape_changed": tgt.shape != src.shape, "shape_is_target": tgt.shape == wanted,
           "mask_iou": iou(src.mask, tgt.mask)}
    row.update({f"kept_{a}": getattr(tgt, a) == getattr(src, a) for a in KEPT})
    row["kept_layout"] = all(row[f"kept_{a}"] for a in KEPT)
    row["changed_and_kept"] = row["shape_changed"] and row["kept_layout"]
    return row


def _summary(rows: list) -> dict:
    rows = [r for r in rows if r is not None]
    out = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in (rows[0] if rows else {})}
    out["n"] = len(rows)
    return out


def _edit_targets(pipe, config, cfg: EditConfig, idx, sources, targets, new_words,
                  word_fraction: float | None = None) -> list:
    """Edited images of the pairs; with `word_fraction`, the new shape word gets its own
    cross-replace fraction (one batch per target word)."""
    if word_fraction is None:
        return [e.target_image for e in edit_batch(pipe, sources, targets, config, cfg,
                                                   seeds=[SEED0 + i for i in idx])]
    out = {}
    for word in sorted(set(new_words)):
        sub = [j for j, w in enumerate(new_words) if w == word]
        word_cfg = replace(cfg, word_cross_replace=((word, word_fraction),))
        edits = edit_batch(pipe, [sources[j] for j in sub], [targets[j] for j in sub], config, word_cfg,
                           seeds=[SEED0 + idx[j] for j in sub])
        out.update({j: e.target_image for j, e in zip(sub, edits)})
    return [out[j] for j in range(len(idx))]


def replace_eval(pipe, scenes, sources, config, edit_cfgs, batch: int, rng: random.Random, caption=full_caption,
                 word_fraction: float | None = None):
    """p2p replace of the shape word (one run per EditConfig) vs the plain target prompt, both
    compared with the source image."""
    shapes = swappable_shapes(pipe.c.tokenizer)
    new = [rng.choice([s for s in shapes if s != sc.objects[0].shape]) for sc in scenes]
    targets = [_swap_shape(caption(sc), sc.objects[0].shape, s) for sc, s in zip(scenes, new)]
    word = "" if word_fraction is None else f"_word{word_fraction:g}"
    rows = {f"p2p_cross{c.cross_replace:g}_self{c.self_replace:g}{word}": [] for c in edit_cfgs}
    rows["plain_prompt"], examples = [], []
    for idx in _chunks(len(scenes), batch):
        src = [oracle.read(sources[i]).main for i in idx]
        outs = {"plain_prompt": _generate(pipe, config, [targets[i] for i in idx], SEED0 + idx[0])}
        for name, c in zip(rows, edit_cfgs):
            outs[name] = _edit_targets(pipe, config, c, idx, [caption(scenes[i]) for i in idx],
                                       [targets[i] for i in idx], [new[i] for i in idx], word_fraction)
        for name, images in outs.items():
            rows[name] += [_compare(s, oracle.read(im).main, new[i]) for s, im, i in zip(src, images, idx)]
        examples += [(sources[i], *(outs[name][j] for name in rows)) for j, i in enumerate(idx)]
    return {name: _summary(r) for name, r in rows.items()}, examples


def colour_stats(image, colour: str) -> tuple[float, float]:
    """(fraction of pixels nearest to `colour` in the palette, mean HSV saturation of the object)."""
    image = image.convert("RGB")
    if image.size != (spec.IMAGE_SIZE, spec.IMAGE_SIZE):  # the oracle reads at the world's size
        image = image.resize((spec.IMAGE_SIZE, spec.IMAGE_SIZE), Image.Resampling.BILINEAR)
    arr = np.asarray(image, np.float32)
    palette = np.array(list(spec.COLORS.values()), np.float32)
    d = ((arr[..., None, :] - palette) ** 2).sum(-1)
    area = float((d.argmin(-1) == list(spec.COLORS).index(colour)).mean())
    obj = oracle.read(image).main
    hsv = np.asarray(image.convert("HSV"), np.float32)[..., 1] / 255
    sat = float(hsv[obj.mask].mean()) if obj is not None else float("nan")
    return area, sat


def _monotone(values: list[float], tol: float) -> bool:
    return all(b >= a - tol for a, b in zip(values, values[1:]))


def reweight_eval(pipe, scenes, sources, config, factors, batch: int, base_cfg: EditConfig,
                  caption=full_caption) -> dict:
    """Scale the colour word's attention by each factor (1 = the source image itself)."""
    areas = np.zeros((len(scenes), len(factors)))
    sats = np.zeros_like(areas)
    for fi, f in enumerate(factors):
        for idx in _chunks(len(scenes), batch):
            prompts = [caption(scenes[i]) for i in idx]
            if f == 1.0:
                images = [sources[i] for i in idx]
            else:
                colours = {scenes[i].objects[0].color for i in idx}
                images = []
                for colour in sorted(colours):  # one equalizer word per batch
                    sub = [i for i in idx if scenes[i].objects[0].color == colour]
                    cfg = replace(base_cfg, mode="reweight", reweight=((colour, f),))
                    res = edit_batch(pipe, [prompts[i - idx[0]] for i in sub], [prompts[i - idx[0]] for i in sub],
                                     config, cfg, seeds=[SEED0 + i for i in sub])
                    images += list(zip(sub, (r.target_image for r in res)))
                images = [im for _, im in sorted(images, key=lambda t: t[0])]
            for i, image in zip(idx, images):
                areas[i, fi], sats[i, fi] = colour_stats(image, scenes[i].objects[0].color)
    ok = ~np.isnan(sats).any(1)
    return {"factors": list(factors),
            "mean_area": [round(float(v), 4) for v in areas.mean(0)],
            "mean_saturation": [round(float(v), 4) for v in sats[ok].mean(0)] if ok.any() else None,
            "monotone_area": round(float(np.mean([_monotone(list(a), 0.005) for a in areas])), 4),
            "monotone_saturation": round(float(np.mean([_monotone(list(s), 0.01) for s in sats[ok]])), 4)
            if ok.any() else None,
            "n": len(scenes)}


def save_examples(examples, folder, limit: int = 16) -> None:
    """A grid per row: source | p2p replace (each setting) | plain target prompt, first `limit` scenes."""
    from pathlib import Path

    from sdlab.io.atomic import atomic_save
    from sdlab.io.images import make_grid

    cells = [im for triple in examples[:limit] for im in triple]
    if cells:
        grid = make_grid(cells, cols=len(examples[0]))
        atomic_save(Path(folder) / "replace_examples.png", lambda tmp: grid.save(tmp, format="PNG"))


def evaluate(pipe, n: int = 64, n_reweight: int | None = None, steps: int = 25, cfg_scale: float | None = None,
             sampler: str = "Euler a", batch: int = 8, cross_replace=(0.8,), self_replace: float = 0.4,
             factors=(0.0, 0.5, 1.0, 2.0, 4.0), examples_dir=None, captions: str = "full",
             word_cross_replace: float | None = None) -> dict:
    cfg_scale = pipe.cfg_scale_for(cfg_scale)          # unset: the model's recommended scale
    config = GenerationConfig("", steps=steps, cfg_scale=cfg_scale, sampler=sampler)
    edit_cfgs = [EditConfig(mode="replace", cross_replace=c, self_replace=min(self_replace, c)) for c in cross_replace]
    edit_cfg = edit_cfgs[0]
    scenes = scenes_for(n, swappable_shapes(pipe.c.tokenizer))
    report = {"model": pipe.c.name, "model_hash": pipe.c.model_hash, "n": n, "steps": steps,
              "cfg_scale": cfg_scale, "sampler": sampler, "captions": captions}
    t = time.time()
    caption = CAPTIONS[captions]
    report["attention_iou"], sources = attention_eval(pipe, scenes, config, batch, caption)
    report["replace"], examples = replace_eval(pipe, scenes, sources, config, edit_cfgs, batch, random.Random(7),
                                               caption, word_cross_replace)
    k = n if n_reweight is None else min(n, n_reweight)
    report["reweight_colour"] = reweight_eval(pipe, scenes[:k], sources[:k], config, tuple(factors), batch, edit_cfg,
                                               caption)
    report["seconds"] = round(time.time() - t, 1)
    if examples_dir:
        save_examples(examples, examples_dir)
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/p2p_eval.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    p.add_argument("--n", type=int, default=64, help="scenes (default 64)")
    p.add_argument("--n-reweight", type=int, default=None, help="scenes for the reweight test (default: --n)")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--cfg-scale", type=float, default=None, help="default: the model's recommended scale")
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--batch", type=int, default=8, help="edit pairs per batch (default 8)")
    p.add_argument("--cross-replace", type=float, nargs="+", default=[0.8, 0.4],
                   help="cross-replace fractions to try for the replace test (default 0.8 0.4)")
    p.add_argument("--self-replace", type=float, default=0.4)
    p.add_argument("--word-cross-replace", type=float, default=None,
                   help="the new shape word's own cross-replace fraction (default: as the others)")
    p.add_argument("--captions", choices=sorted(CAPTIONS), default="full",
                   help="full: every attribute named; sized: size, colour and shape (position and background left "
                        "to the seed); short: colour and shape only (size too left to the seed)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="write the JSON report here")
    out.add_argument("--results", action="store_true",
                     help="write the JSON report to benchmarks/results/p2p_eval.json, this experiment's one "
                          "current result (a newer run replaces the file an earlier run of this script wrote)")
    p.add_argument("--examples", default=None, help="folder for an example grid (source | p2p... | plain)")
    args = p.parse_args(argv)
    from sdlab.pipeline import Pipeline

    report = evaluate(Pipeline.load(args.model), n=args.n, n_reweight=args.n_reweight, steps=args.steps,
                      cfg_scale=args.cfg_scale, sampler=args.sampler, batch=args.batch,
                      cross_replace=args.cross_replace, self_replace=args.self_replace, examples_dir=args.examples,
                      captions=args.captions, word_cross_replace=args.word_cross_replace)
    emit_report(report, result_file(__file__) if args.results else args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
