"""Loss and classifier guidance by what it pulls toward, at the scales measured on the shipped
model: what `sdlab generate --color-guidance / --clip-guidance / --classifier-guidance` use."""

from __future__ import annotations

from typing import Optional, Sequence

# Measured on the shipped model (python benchmarks/guidance_eval.py, docs/steering.md): colour 3000
# makes the object bluer on average; classifier "triangle" with an empty prompt, 32 seeds: 0.03 at 0,
# 0.09 at 16, 0.25 at 24, 0.38 at 48, 0.28 at 64.
DEFAULT_GUIDANCE_SCALES = {"color": 3000.0, "clip": 3000.0, "classifier": 48.0}


def guidance(*, color: Optional[Sequence[float]] = None, clip: Optional[str] = None,
             classifier: Optional[str] = None, scale: Optional[float] = None, every: int = 1) -> list:
    """Wrappers for `Pipeline.generate(config, guidance=...)`, at most one of each kind: toward
    the RGB colour `color` (0..255 each, sdlab.guidance.losses.color_loss), toward the text
    `clip` with the shipped CLIP pair, toward the shape label `classifier` with the shipped
    noise-aware classifier. `scale`: all kinds' strength (default DEFAULT_GUIDANCE_SCALES);
    `every`: apply every N denoiser calls."""
    from .classifier import classifier_guidance
    from .loss import loss_guidance
    from .losses import clip_loss, color_loss

    def strength(kind: str) -> float:
        return DEFAULT_GUIDANCE_SCALES[kind] if scale is None else scale

    out = []
    if color is not None:
        out.append(loss_guidance(color_loss(color), strength("color"), every=every))
    if clip:
        out.append(loss_guidance(clip_loss(clip), strength("clip"), every=every))
    if classifier:
        out.append(classifier_guidance(classifier, strength("classifier"), every=every))
    return out
