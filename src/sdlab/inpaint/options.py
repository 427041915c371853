"""Inpainting options, declared once (sdlab.config.setting): the CLI flags of `sdlab inpaint`, the
HTTP API's fields and the checks here all come from these declarations. Names and defaults are
AUTOMATIC1111's (Mask blur 4, Inpaint area "Whole picture", padding 32), except two defaults, which
are the measured recipe (benchmarks/inpaint_eval.py): Masked content "fill" and denoising strength 1
(INPAINT_STRENGTH), which draw what the prompt asks in the masked area; A1111's "original" at 0.75
mostly keeps what was there."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

from ..config import MAX_SIDE, check_settings, setting
from ..errors import ConfigError

# A1111's "Masked content", in the order of its API's inpainting_fill (0, 1, 2, 3)
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
GROUP = "inpainting"
SIDES = ("left", "top", "right", "bottom")
INPAINT_STRENGTH = 1.0     # the default denoising strength of an inpaint job (img2img's is 0.75)


@dataclass(frozen=True)
class InpaintConfig:
    """How the masked area is repainted (the prompt, sampler, seed and strength: GenerationConfig)."""

    mask_blur: int = setting(4, "Gaussian blur of the mask in pixels (A1111's Mask blur): softens the seam",
                             lo=0, hi=64, group=GROUP)
    masked_content: str = setting("fill", "what the masked area starts from (A1111's Masked content): "
                                  "fill is its surroundings' colours, original the image (A1111's default)",
                                  choices=lambda: list(MASKED_CONTENT), group=GROUP)
    only_masked: bool = setting(False, "inpaint a crop around the mask at the model's size and paste it back "
                                "(A1111's Inpaint area: Only masked)", group=GROUP)
    padding: int = setting(32, "pixels of context around the mask for --only-masked", lo=0, hi=MAX_SIDE, group=GROUP)
    invert_mask: bool = setting(False, "repaint the black area instead of the white one", group=GROUP)

    def __post_init__(self):
        for name in ("only_masked", "invert_mask"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.masked_content not in MASKED_CONTENT:
            raise ConfigError(f"masked_content must be one of {', '.join(MASKED_CONTENT)}, got {self.masked_content!r}")
        check_settings(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def infotext_fields(self) -> dict:
        """A1111's infotext keys for these options (it writes the non-default ones only)."""
        out = {"Mask blur": self.mask_blur}
        if self.masked_content != "original":
            out["Masked content"] = self.masked_content
        if self.invert_mask:
            out["Mask mode"] = "Inpaint not masked"
        if self.only_masked:
            out["Inpaint area"], out["Masked area padding"] = "Only masked", self.padding
        return out


@dataclass(frozen=True)
class Expand:
    """Pixels added on each side for outpainting."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0

    def __post_init__(self):
        for side in SIDES:
            v = getattr(self, side)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SIDE:
                raise ConfigError(f"expand {side} must be a whole number of pixels between 0 and {MAX_SIDE}, got {v!r}")
        if not any(getattr(self, s) for s in SIDES):
            raise ConfigError("expand needs at least one side above 0, e.g. left=16,top=8")

    @classmethod
    def parse(cls, text: str) -> "Expand":
        """"left=16,top=8" -> Expand(left=16, top=8); sides: left, top, right, bottom."""
        values = {}
        for item in filter(None, (s.strip() for s in str(text).split(","))):
            m = re.fullmatch(r"(\w+)\s*=\s*(\d+)", item)
            if not m or m.group(1) not in SIDES or m.group(1) in values:
                raise ConfigError(f"expand takes SIDE=PIXELS pairs with SIDE one of {', '.join(SIDES)}, each once, "
                                  f"e.g. left=16,top=8; got {item!r}")
            values[m.group(1)] = int(m.group(2))
        return cls(**values)

    def __str__(self) -> str:
        return ",".join(f"{s}={getattr(self, s)}" for s in SIDES if getattr(self, s))
