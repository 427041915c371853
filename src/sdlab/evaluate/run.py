"""What a personalization run learned, per checkpoint or per artifact, as a Markdown report:
`sdlab eval` and its Python form.

    from sdlab.evaluate.run import EvalOptions, evaluate_learned
    result = evaluate_learned(EvalOptions(run_dir="runs/ti", token="<my-shape>", concept=("shape=heart",)))
    result.report, result.rows            # report.md, and (label, step, metrics, images) per checkpoint

Each option is declared once, in EvalOptions (sdlab.config.setting); `sdlab eval` derives its
flags from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from ..config import setting
from ..errors import ConfigError

if TYPE_CHECKING:       # the rest loads in the functions: `sdlab eval --help` reads EvalOptions without torch
    from .report import EvalSettings

ORACLE = ("auto", "on", "off")


@dataclass(frozen=True)
class EvalOptions:
    """Everything `sdlab eval` is told: what to read, what the concept is, how to sample and pick."""

    run_dir: Optional[str] = setting(None, "a training output folder: every checkpoint is evaluated")
    artifacts: tuple[str, ...] = setting((), "embedding / LoRA file or model folder (repeatable)", flag="--artifact")
    model: Optional[str] = setting(None, "base model", default_text="the run's own, else the shipped model")
    token: Optional[str] = setting(None, "how prompts name the concept", default_text="<my-shape>")
    concept: tuple[str, ...] = setting((), "oracle target, e.g. shape=heart or fill=striped (repeatable; none: "
                                       "shape=heart)")
    world_prompts: bool = setting(False, "no token: sample the shapes world's own captions with the concept put in (a "
                                  "fine-tune on a style or data set), and read how often the samples adopt it")
    vae: Optional[str] = setting(None, "sample through this VAE (folder or file), e.g. a tuned decoder")
    embeddings: tuple[str, ...] = setting((), "add this embedding FILE to every model read (e.g. a pivotal-tuning "
                                          "LoRA's learned_embeds)", flag="--embedding")
    concept_text: Optional[str] = setting(None, "plain words for CLIP", default_text="'a <value>'")
    n: int = setting(16, "samples per prompt")
    steps: int = setting(20, "sampling steps")
    cfg_scale: Optional[float] = setting(None, "classifier-free guidance scale",
                                         default_text="the model's recommended scale (7.5 unless it names one)")
    seed: int = setting(0, "seed of the first sample")
    color: str = setting("red", "colour asked for in the fidelity prompt")
    lora_scale: float = setting(1.0, "scale of a LoRA artifact")
    reference: Optional[str] = setting(None, "folder of reference images",
                                       default_text="with the oracle, renders of the concept")
    encoder: Optional[str] = setting(None, "local feature model folder", default_text="the shipped CLIP")
    no_clip: bool = setting(False, "skip CLIP scores and the Frechet distance")
    drift: bool = setting(False, "also measure drift on class prompts against the base model")
    max_drift: float = setting(0.1, "with --drift, pick the best checkpoint only among those whose class-prompt "
                               "accuracy (without the oracle: same-seed similarity) fell by at most this (0-1)")
    min_diversity: float = setting(0.25, "pick only checkpoints whose samples of 'a TOKEN' keep at least this share of "
                                   "the reference images' own diversity, i.e. have not collapsed onto one picture "
                                   "(0-1; 0: off)")
    confirm_seed: Optional[int] = setting(None, "re-read the best checkpoint on fresh samples from this seed (the "
                                          "pick's own rates are biased up)")
    oracle: str = setting("auto", "shapes-world oracle rates: auto = on for the shipped world's models, off for SD "
                          "1.x/2.x (then only the encoder's scores)", choices=lambda: ORACLE)
    context: Optional[str] = setting(None, "also sample 'a TOKEN CONTEXT' and CLIP-score it (prompt fidelity)",
                                     default_text="without the oracle, 'on the beach'")
    class_prompt: Optional[str] = setting(None, "without the oracle, --drift compares base and tuned samples of this "
                                          "prompt (e.g. 'a dog')")
    baseline: bool = setting(False, "add a row for the base model itself (what the prompts gave before training)")
    out: Optional[str] = setting(None, "report folder", default_text="RUN/eval or ./eval")

    def __post_init__(self):
        if bool(self.run_dir) == bool(self.artifacts):
            raise ConfigError("give a run folder or artifacts to evaluate (--run-dir or --artifact), one of them")
        parse_concept(self.concept)
        if self.n < 1:
            raise ConfigError(f"--n must be >= 1, got {self.n}")
        if self.confirm_seed is not None and abs(self.confirm_seed - self.seed) < self.n:
            raise ConfigError(f"--confirm-seed {self.confirm_seed} reuses samples of --seed {self.seed} "
                              f"(seeds {self.seed}..{self.seed + self.n - 1}); pick one at least --n ({self.n}) away")
        if not 0.0 <= self.max_drift <= 1.0:
            raise ConfigError(f"--max-drift is a drop in accuracy between 0 and 1, got {self.max_drift}")
        if not 0.0 <= self.min_diversity <= 1.0:
            raise ConfigError(f"--min-diversity is a share of the reference images' diversity between 0 and 1, "
                              f"got {self.min_diversity}")
        if self.oracle not in ORACLE:
            raise ConfigError(f"--oracle must be auto, on or off, got {self.oracle!r}")


@dataclass
class EvalResult:
    report: Path                        # report.md (report.json, plots and sample grids beside it)
    rows: list                          # (label, step, metrics, images) per checkpoint or artifact
    confirmed: Optional[tuple] = None   # (seed, metrics) of the best one re-read on fresh samples


def parse_concept(items) -> dict:
    """("shape=heart", "fill=striped") -> {"shape": "heart", "fill": "striped"}, checked against
    what the oracle knows; none: shape=heart."""
    from ..world import spec

    values = {"shape": spec.SHAPES, "color": tuple(spec.COLORS), "fill": spec.FILLS, "size": tuple(spec.SIZES),
              "position": tuple(spec.POSITIONS)}
    out = {}
    for item in items or ["shape=heart"]:
        key, _, value = item.partition("=")
        if key not in values or not value:
            raise ConfigError(f"--concept must be ATTR=VALUE with ATTR shape/color/fill/size/position, got {item!r}")
        if value not in values[key]:
            raise ConfigError(f"--concept {item}: the oracle knows {key} {', '.join(values[key])}")
        out[key] = value
    return out


def evaluate_learned(opts: EvalOptions, log: Callable[[str], None] = print) -> EvalResult:
    """Evaluate every checkpoint of `opts.run_dir` (or each artifact) and write the report;
    `log` gets one line of metrics per model read."""
    from . import apply
    from .report import evaluate, pick_best, write_report

    if opts.run_dir and opts.model is None:
        from ..training.loop import run_base_model

        opts = dataclasses.replace(opts, model=run_base_model(opts.run_dir))   # the run's own, when recorded
    base, s = _settings(opts)
    encoder = None
    if not opts.no_clip:
        from .features import Encoder

        encoder = Encoder(opts.encoder)
    reference = _reference(opts, s)
    if encoder is not None and reference and len(reference) > 1 and opts.min_diversity > 0:
        from .scores import diversity

        s.reference_diversity = diversity(encoder.images(reference))
        s.diversity_floor = opts.min_diversity * s.reference_diversity
    targets = _targets(opts)

    def read(name: str, target, settings: EvalSettings):
        pipe = apply.load_artifact(opts.model, target, scale=opts.lora_scale, vae=opts.vae)
        for path in opts.embeddings:
            pipe.load_embedding(path)
        metrics, images = evaluate(pipe, settings, encoder, reference, base)
        log(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        return metrics, images

    rows = [(label, step, *read(label, target, s)) for label, step, target in targets]
    if opts.run_dir:
        _add_logged_losses(rows, opts.run_dir)
    confirmed = None
    if opts.confirm_seed is not None:
        label = pick_best(rows, s.max_drift, s.diversity_floor)[0]
        target = next(t for lb, _, t in targets if lb == label)
        metrics, _ = read(f"{label} on seed {opts.confirm_seed}", target,
                          dataclasses.replace(s, seed=opts.confirm_seed))
        confirmed = (opts.confirm_seed, metrics)
    out = Path(opts.out or (Path(opts.run_dir) / "eval" if opts.run_dir else "eval"))
    return EvalResult(write_report(out, rows, s, confirmed=confirmed), rows, confirmed)


def _settings(opts: EvalOptions) -> tuple:
    """(the base model's pipeline for --drift or None, the EvalSettings), with the oracle decided
    and the settings that need it checked."""
    from . import apply
    from .report import EvalSettings

    concept = parse_concept(opts.concept)
    needs_base = opts.drift or (opts.oracle == "auto" and opts.model)
    base = apply.load_artifact(opts.model, None, vae=opts.vae) if needs_base else None
    oracle = opts.oracle == "on" or (opts.oracle == "auto" and (base is None or base.c.family == "custom"))
    if not oracle:
        if opts.no_clip:
            raise ConfigError("without the oracle the scores come from the feature encoder: drop --no-clip")
        if not opts.concept_text:
            raise ConfigError("without the oracle, say what the concept is for CLIP: --concept-text 'a dog'")
        if opts.drift and not opts.class_prompt:
            raise ConfigError("--drift without the oracle needs --class-prompt (e.g. 'a dog')")
    if opts.world_prompts and opts.token is not None:
        raise ConfigError("--world-prompts uses the world's captions, which name the concept by its own word "
                          f"({', '.join(concept.values())}): drop --token {opts.token!r}")
    if opts.world_prompts and not oracle:
        raise ConfigError("--world-prompts samples the shapes world's captions and needs its oracle: drop "
                          "--oracle off, or use a model of the shapes world")
    text = opts.concept_text or "a " + " ".join(concept.values())
    from ..models.generation_defaults import model_default

    cfg_scale = opts.cfg_scale if opts.cfg_scale is not None else model_default(opts.model, "cfg_scale")
    s = EvalSettings(opts.token or "<my-shape>", concept, text, opts.n, opts.seed, opts.steps, cfg_scale,
                     opts.color, max_drift=opts.max_drift, oracle=oracle, class_prompt=opts.class_prompt,
                     context=opts.context or (None if oracle else "on the beach"), world_prompts=opts.world_prompts)
    return (base if opts.drift else None), s


def _reference(opts: EvalOptions, s: EvalSettings) -> list | None:
    """The reference images: --reference's, else what the concept looks like in the world."""
    from .concept import concept_images, world_scenes

    if opts.reference:
        from ..io.images import load_image
        from ..training.data import IMAGE_SUFFIXES

        return [load_image(p) for p in sorted(Path(opts.reference).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if opts.world_prompts:
        from ..world.render import render

        return [render(scene) for scene in world_scenes(s.concept, max(opts.n, 8))[1]]   # what the captions ask for
    if s.oracle:
        return concept_images(max(opts.n, 8), shape=s.concept.get("shape", "heart"),
                              fill=s.concept.get("fill", "solid"), seed=12345)
    return None                         # no renders of a real concept: image similarity needs --reference


def _targets(opts: EvalOptions) -> list[tuple]:
    """(label, step, what to load) per model read: each checkpoint or artifact, the base model first
    with --baseline."""
    from . import apply
    from .report import BASELINE

    if opts.run_dir:
        targets = [(p.name, int(p.name.split("-")[1]), p) for p in apply.checkpoints_of(opts.run_dir)]
    else:
        targets = [(Path(a).stem or Path(a).name, i, a) for i, a in enumerate(opts.artifacts)]
    return [(BASELINE, 0, None)] + targets if opts.baseline else targets


def _add_logged_losses(rows: list, run_dir: str) -> None:
    """What the run logged of each checkpoint: its validation loss, into its metrics."""
    from ..training.logs import validation_losses
    from .report import BASELINE

    logged = validation_losses(run_dir)
    for label, step, metrics, _ in rows:
        if label != BASELINE and step in logged:
            metrics["val_loss"] = logged[step]
