"""Per-checkpoint evaluation of a training run, written as Markdown with plots and grids,
so a user can pick the best step."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from ..io.atomic import atomic_save, atomic_write_text
from ..io.images import make_grid
from . import concept as oracle_eval
from .scores import clip_score, diversity, frechet_distance, image_similarity

RATE_KEYS = ("detection", "color", "color+concept", "position", "position+concept", "color+position+concept",
             "adoption", "all_attributes", "plain_adoption")
UNIT_KEYS = ("image_similarity", "diversity", "drift_similarity")          # in [0, 1] too: plotted with the rates
SCORES_NOTE = ("clip_text_image: CLIP score (100 x cosine) of the \"a <token>\" samples against the concept's "
               "words; image_similarity / frechet_distance: mean cosine / Frechet distance of their features to "
               "the reference images; diversity: 1 - their mean similarity to each other; clip_text_context: "
               "CLIP score of \"a <token> <context>\" samples against the concept's words and the context; "
               "drift_similarity: same-seed similarity of class-prompt samples to the base model's; val_loss: "
               "the run's own validation loss at that step (logs/loss.csv), where it logged one.")
WORLD_NOTE = ("Rates, with the 95 % Wilson interval: adoption: share of samples in which the oracle reads the "
              "concept's attributes in the object the caption asks for; all_attributes: and every other attribute "
              "the caption names; plain_adoption: the concept shows in samples of the same captions without it (how "
              "far the plain vocabulary moved). clip_text_image: CLIP score of each sample against its caption; "
              "image_similarity / frechet_distance: to renders of what the captions ask for; diversity: 1 - the "
              "samples' mean similarity to each other.")
PALETTE = [(20, 60, 160), (200, 60, 40), (40, 150, 60), (150, 60, 190), (230, 150, 20), (40, 170, 190)]


@dataclass
class EvalSettings:
    token: str = "<my-shape>"
    concept: dict = field(default_factory=lambda: {"shape": "heart"})
    concept_text: str = "a heart"            # what CLIP should read in "a <token>" samples
    n: int = 16
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 7.5
    color: str = "red"
    position: str = "left"
    max_drift: float | None = 0.1            # pick only checkpoints whose class-prompt accuracy fell at most this
    oracle: bool = True                      # False: any model, scored by the encoder only (no shapes world)
    context: str | None = None               # "a <token> <context>" samples, CLIP-scored against the context
    class_prompt: str | None = None          # drift without the oracle: same-seed base vs tuned similarity
    diversity_floor: float | None = None     # pick only checkpoints whose "a <token>" diversity is at least this
    reference_diversity: float | None = None  # the reference images' own diversity (the floor is a share of it)
    world_prompts: bool = False              # no token: the world's captions with the concept (style fine-tunes)


def evaluate(pipe, s: EvalSettings, encoder=None, reference=None, base_pipe=None) -> tuple[dict, list]:
    """Oracle rates (shapes world), then the general scores of any model: CLIP score, image
    similarity and Frechet distance to `reference` images with `encoder`, the CLIP score of
    "a <token> <context>" samples, and drift against `base_pipe`. Returns (metrics, the
    samples of "a <token>")."""
    sample = lambda prompt, seed=s.seed: oracle_eval.sample(pipe, prompt, s.n, seed, s.steps, s.cfg_scale)
    prompts = None
    if s.oracle and s.world_prompts:
        metrics, shown, prompts = oracle_eval.world_report(pipe, s.concept, s.n, s.seed, s.steps, s.cfg_scale)
    elif s.oracle:
        probes = oracle_eval.concept_probes(s.token, s.concept, s.color, s.position)
        metrics, images = oracle_eval.concept_report(pipe, probes, s.n, s.seed, s.steps, s.cfg_scale)
        shown = images[probes["detection"].prompt]
    else:
        metrics, shown = {}, sample(f"a {s.token}")
    if encoder is not None:
        feats = encoder.images(shown)
        if len(shown) > 1:
            metrics["diversity"] = diversity(feats)
        if encoder.is_clip:
            metrics["clip_text_image"] = clip_score(feats, encoder.texts(prompts or [s.concept_text] * len(shown)))
        if reference:
            ref = encoder.images(reference)
            metrics["image_similarity"] = image_similarity(feats, ref)
            metrics["frechet_distance"] = frechet_distance(feats, ref)
        if s.context and encoder.is_clip and not s.world_prompts:
            context = encoder.images(sample(f"a {s.token} {s.context}"))
            metrics["clip_text_context"] = clip_score(context, encoder.texts([f"{s.concept_text} {s.context}"] *
                                                                             len(context)))
    if base_pipe is not None and s.oracle:
        d = oracle_eval.drift(base_pipe, pipe, oracle_eval.class_probes(), max(2, s.n // 4), s.seed, s.steps,
                              s.cfg_scale)
        metrics.update({f"drift_{k}": v for k, v in d.items()})
    elif base_pipe is not None and s.class_prompt and encoder is not None:
        base = encoder.images(oracle_eval.sample(base_pipe, s.class_prompt, s.n, s.seed, s.steps, s.cfg_scale))
        metrics["drift_similarity"] = image_similarity(base, encoder.images(sample(s.class_prompt)), paired=True)
    return metrics, shown


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a rate measured on n samples (Wilson 1927)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _drift(metrics: dict) -> float:
    """How far the class prompts moved: the oracle's accuracy drop, or 1 - same-seed similarity."""
    if "drift_accuracy_drop" in metrics:
        return metrics["drift_accuracy_drop"]
    return 1.0 - metrics["drift_similarity"] if "drift_similarity" in metrics else 0.0


def _drifted(row: tuple, max_drift: float) -> bool:
    return _drift(row[2]) > max_drift + 1e-9


def _score(metrics: dict) -> tuple[str, float]:
    """(rule, value) that ranks checkpoints: the oracle's detection + colour-with-concept rates;
    with world prompts, adoption + every attribute right; without the oracle, subject fidelity
    (image similarity) + prompt fidelity (context CLIP score)."""
    if "adoption" in metrics:
        return "adoption + all attributes", metrics["adoption"] + metrics["all_attributes"]
    if "detection" in metrics:
        return "detection + colour-with-concept", metrics["detection"] + metrics.get("color+concept", 0)
    return ("image similarity + context CLIP score / 100",
            metrics.get("image_similarity", 0) + metrics.get("clip_text_context", 0) / 100)


BASELINE = "base-model"                   # the label of the untrained model's row (--baseline): never picked


def _collapsed(row: tuple, floor: float) -> bool:
    return "diversity" in row[2] and row[2]["diversity"] < floor - 1e-9


def _limits(max_drift: float | None, floor: float | None) -> list:
    """A predicate per limit a pick respects: drift, then collapse."""
    out = []
    if max_drift is not None:
        out.append(lambda r: not _drifted(r, max_drift))
    if floor is not None:
        out.append(lambda r: not _collapsed(r, floor))
    return out


def _eligible(rows: list[tuple], max_drift: float | None, floor: float | None) -> tuple[list[tuple], list[bool]]:
    """The rows a pick chooses among, and per limit whether any row met it (an unmet limit is dropped)."""
    rows = [r for r in rows if r[0] != BASELINE] or rows
    kept, met = rows, []
    for ok in _limits(max_drift, floor):
        narrowed = [r for r in kept if ok(r)]
        met.append(bool(narrowed))
        kept = narrowed or kept
    return kept, met


def pick_best(rows: list[tuple], max_drift: float | None = None, floor: float | None = None) -> tuple:
    """The checkpoint with the best `_score` (earliest on ties), among those whose class prompts
    moved by at most `max_drift` when drift was measured, and whose samples of "a <token>" have
    a diversity of at least `floor` (not collapsed onto one picture); a limit no checkpoint meets
    is dropped."""
    kept, _ = _eligible(rows, max_drift, floor)
    return max(kept, key=lambda r: (_score(r[2])[1], -r[1]))


def _pick_rule(rows: list[tuple], max_drift: float | None, floor: float | None = None,
               reference_diversity: float | None = None) -> str:
    rule, first = _score(rows[0][2])[0], rows[0][2]
    if not ("drift_accuracy_drop" in first or "drift_similarity" in first):
        max_drift = None
    if "diversity" not in first:
        floor = None
    what = ("class-prompt accuracy" if "drift_accuracy_drop" in first
            else "same-seed similarity of class-prompt samples")
    limits = []                                  # (as a kept limit, as one no checkpoint met)
    if max_drift is not None:
        limits.append((f"whose {what} fell by at most {max_drift:.2f}",
                       f"No checkpoint kept its {what} within {max_drift:.2f} of the base model's"))
    if floor is not None:
        share = f" ({floor / reference_diversity:.0%} of the reference images' {reference_diversity:.2f})" \
            if reference_diversity else ""
        limits.append((f"whose diversity is at least {floor:.2f}{share}, i.e. not collapsed onto one picture",
                       f"No checkpoint kept a diversity of {floor:.2f}{share}: all collapsed onto one picture"))
    _, met = _eligible(rows, max_drift, floor)
    kept = [k for (k, _), ok in zip(limits, met) if ok]
    dropped = [d for (_, d), ok in zip(limits, met) if not ok]
    out = f"Best by {rule}" + (" among the checkpoints " + " and ".join(kept) if kept else "")
    if dropped:
        out = "; ".join(dropped) + "; " + out[0].lower() + out[1:] + ("" if kept else " over all of them")
    return out


def _cell(key: str, value: float, n: int) -> str:
    if key not in RATE_KEYS:
        return f"{value:.3f}"
    lo, hi = wilson_interval(value, n)
    return f"{value:.2f} ({lo:.2f}-{hi:.2f})"


def metric_plot(steps: list[int], series: dict[str, list[float]], size=(640, 320)) -> Image.Image:
    """Rates in [0, 1] against step, one coloured line per metric, with a legend."""
    w, h = size
    left, right, top, bottom = 40, 170, 10, 24
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    d.rectangle([left, top, w - right, h - bottom], outline=(160, 160, 160))
    s0, s1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    for i, (name, values) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(left + (st - s0) / (s1 - s0) * (w - left - right), top + (1 - v) * (h - top - bottom))
               for st, v in zip(steps, values)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        d.text((w - right + 8, top + 14 * i), name, fill=colour)
    d.text((4, top), "1.0", fill="black")
    d.text((4, h - bottom - 10), "0.0", fill="black")
    d.text((left, h - bottom + 6), f"step {s0}", fill="black")
    d.text((w - right - 60, h - bottom + 6), f"step {max(steps)}", fill="black")
    return img


def write_report(out_dir: str | Path, rows: list[tuple[str, int, dict, list]], settings: EvalSettings,
                 title: str = "Personalization report", confirmed: tuple[int, dict] | None = None) -> Path:
    """rows: (label, step, metrics, detection images) per checkpoint -> report.md, plot, grids, json.
    confirmed: (seed, metrics) of the best checkpoint re-read on fresh samples."""
    out = Path(out_dir)
    target = f"oracle target {settings.concept}" if settings.oracle else f"read as \"{settings.concept_text}\""
    if settings.world_prompts:
        lines = [f"# {title}", "", f"World prompts (no token): {settings.n} of the shapes world's full captions with "
                 f"{settings.concept} put in, one sample each (prompt i: seed {settings.seed} + i), "
                 f"{settings.steps} steps, CFG {settings.cfg_scale}.", "", WORLD_NOTE, ""]
    else:
        lines = [f"# {title}", "", f"Concept token `{settings.token}`, {target}; {settings.n} samples per prompt, "
                 f"seed {settings.seed}, {settings.steps} steps, CFG {settings.cfg_scale}.", ""]
        rates = ("Rates: share of samples whose main object the shapes-world oracle reads with the target "
                 f"attributes, with the 95 % Wilson interval for {settings.n} samples." if settings.oracle else
                 "No oracle (any model): scores from the feature encoder only.")
        lines += [rates, SCORES_NOTE, ""]
    keys = list(dict.fromkeys(k for row in rows for k in row[2]))       # a column may be missing in some rows
    lines += ["| checkpoint | step | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for label, step, metrics, images in rows:
        cells = (_cell(k, metrics[k], settings.n) if k in metrics else "-" for k in keys)
        lines.append(f"| {label} | {step} | " + " | ".join(cells) + " |")
        grid = make_grid(images, cols=min(8, len(images)))
        atomic_save(out / f"samples-{label}.png", lambda tmp, g=grid: g.save(tmp, format="PNG"))
    rate_keys = [k for k in keys if k in RATE_KEYS + UNIT_KEYS and all(k in r[2] for r in rows)]
    if len(rows) > 1 and rate_keys:
        plot = metric_plot([r[1] for r in rows], {k: [r[2][k] for r in rows] for k in rate_keys})
        atomic_save(out / "rates.png", lambda tmp: plot.save(tmp, format="PNG"))
        lines += ["", "![rates and similarities per step](rates.png)"]
    best = pick_best(rows, settings.max_drift, settings.diversity_floor)
    rule = _pick_rule(rows, settings.max_drift, settings.diversity_floor, settings.reference_diversity)
    lines += ["", f"{rule}: **{best[0]}** (step {best[1]})."]
    if confirmed is not None:
        seed, metrics = confirmed
        lines += ["", f"Re-read on fresh samples (seed {seed}), since the best of {len(rows)} noisy rates is biased "
                  "upward: " + ", ".join(f"{k} {_cell(k, v, settings.n)}" for k, v in metrics.items()) + "."]
    elif len(rows) > 1:
        lines += ["", f"The best of {len(rows)} noisy rates is biased upward: confirm it on fresh samples "
                  "(`--confirm-seed`)."]
    shown = "the concept's world prompts" if settings.world_prompts else f"\"a {settings.token}\""
    lines += [""] + [f"![{label} samples of {shown}](samples-{label}.png)" for label, *_ in rows]
    summary = [{"label": r[0], "step": r[1], **r[2]} for r in rows]
    if confirmed is not None:
        summary.append({"label": best[0], "step": best[1], "confirm_seed": confirmed[0], **confirmed[1]})
    atomic_write_text(out / "report.json", json.dumps(summary, indent=1))
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
