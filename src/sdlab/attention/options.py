"""What the attention commands declare, without torch (`sdlab attend --help`, `sdlab edit --help`):
the UNet places of attention layers and the prompt-to-prompt EditConfig (sdlab.attention.edit)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import setting
from ..errors import ConfigError

PLACES = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
ALL_PLACES = tuple(PLACES.values())

MODES = ("replace", "refine", "reweight")
MAX_WEIGHT = 10.0


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in [0, 1] (a fraction of the steps), got {value!r}")
    return float(value)


def _word_pairs(name: str, value: Any, meaning: str) -> tuple[tuple[str, Any], ...]:
    """A {word: number} mapping (or pairs) as a tuple of (word, value) pairs, or ConfigError."""
    items = value.items() if isinstance(value, dict) else value
    try:
        return tuple((str(w), v) for w, v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must map {meaning}, got {value!r}") from None


def _reweights(value: Any) -> tuple[tuple[str, float], ...]:
    pairs = _word_pairs("reweight", value, "words to factors, e.g. {'red': 2.0}")
    for word, v in pairs:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > MAX_WEIGHT:
            raise ConfigError(f"reweight factor of {word!r} must be a number in [-{MAX_WEIGHT:g}, {MAX_WEIGHT:g}], "
                              f"got {v!r}")
    return tuple((w, float(v)) for w, v in pairs)


@dataclass(frozen=True)
class EditConfig:
    """How to edit: mode, the paper's cross/self replace step fractions, reweighting, local blend.

    self_max_queries: self-attention layers with at most this many pixels are replaced (the
    paper's 16x16 = 256 for SD's 64x64 latents). blend_start: fraction of steps before blending.
    """

    mode: str = setting("replace", "replace: word swap (same token count); refine: added words; "
                                   "reweight: scale words", choices=lambda: list(MODES))
    cross_replace: float = setting(0.8, "fraction of steps with cross-attention injected", lo=0.0, hi=1.0)
    self_replace: float = setting(0.4, "fraction of steps with self-attention injected", lo=0.0, hi=1.0)
    word_cross_replace: tuple[tuple[str, float], ...] = ()   # per target word, e.g. {"square": 0.2}
    reweight: tuple[tuple[str, float], ...] = ()
    blend: tuple[str, ...] = ()
    blend_threshold: float = setting(0.3, "local blend mask threshold in [0, 1]", lo=0.0, hi=1.0)
    blend_start: float = 0.2
    self_max_queries: int = 256

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("cross_replace", "self_replace", "blend_threshold", "blend_start"):
            object.__setattr__(self, name, _fraction(name, getattr(self, name)))
        object.__setattr__(self, "reweight", _reweights(self.reweight))
        object.__setattr__(self, "word_cross_replace", _word_fractions(self.word_cross_replace))
        if isinstance(self.blend, str):
            object.__setattr__(self, "blend", (self.blend,))
        object.__setattr__(self, "blend", tuple(str(w) for w in self.blend))
        q = self.self_max_queries
        if isinstance(q, bool) or not isinstance(q, int) or q < 0:
            raise ConfigError(f"self_max_queries must be an integer >= 0, got {q!r}")
        if self.mode == "reweight" and not self.reweight:
            raise ConfigError("mode 'reweight' needs at least one word to reweight, e.g. reweight={'red': 2.0}")


def _word_fractions(value: Any) -> tuple[tuple[str, float], ...]:
    pairs = _word_pairs("word_cross_replace", value, "target words to step fractions, e.g. {'square': 0.2}")
    return tuple((w, _fraction(f"word_cross_replace of {w!r}", v)) for w, v in pairs)
