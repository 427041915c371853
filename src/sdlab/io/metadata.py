"""PNG metadata: AUTOMATIC1111's "infotext" (the ``parameters`` text chunk) plus sdlab settings.

Infotext layout, as A1111 writes and other tools read it::

    PROMPT (may span lines)
    Negative prompt: NEGATIVE (line omitted when empty)
    Steps: 25, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7.5, Seed: 1, Size: 64x64, Model hash: ...

Values holding a comma, colon or newline are written as JSON strings ("...").
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sdlab.errors import ImageReadError
from sdlab.io.atomic import atomic_save

NEGATIVE_PREFIX = "Negative prompt:"
PARAMETERS_KEY = "parameters"
SETTINGS_KEY = "sdlab"
# "Key: value" pairs, value either a JSON string or everything up to the next comma.
_PARAM_RE = re.compile(r'\s*(?P<key>\w[\w \-/]*?)\s*:\s*(?P<val>"(?:[^"\\]|\\.)*"|[^,]*)\s*(?:,|$)')
_KEY_RE = re.compile(r"\w[\w \-/]*")
INT_KEYS = {"Steps", "Seed", "Clip skip", "Batch size", "Batch pos", "Variation seed",
            "Seed resize from-1", "ENSD", "Hires steps", "Mask blur", "Masked area padding"}
FLOAT_KEYS = {"CFG scale", "Denoising strength", "Variation seed strength", "Eta",
              "Hires upscale", "Guidance rescale", "Deep Shrink"}


# A1111 >= 1.9 writes the sigma schedule apart from the sampler ("Sampler: DPM++ 2M, Schedule type:
# Karras"); without the field it takes the sampler's own default (Karras, for DPM++ 2M). Its schedule
# types (sd_schedulers.py) by name and label, those sdlab has. sdlab's "default" sigmas follow the model's
# timestep spacing: A1111's Uniform is linspace, SGM Uniform trailing, DDIM leading.
SCHEDULE_LABELS = {"automatic": "Automatic", "uniform": "Uniform", "sgm_uniform": "SGM Uniform", "ddim": "DDIM",
                   "karras": "Karras", "exponential": "Exponential", "polyexponential": "Polyexponential",
                   "align_your_steps": "Align Your Steps"}
SPACING_SCHEDULES = {"linspace": "uniform", "trailing": "sgm_uniform", "leading": "ddim"}


def schedule_label(sigma_kind: str, timestep_spacing: str) -> str:
    """A1111's "Schedule type" of sdlab's sigma kind ("default": the label of the model's spacing)."""
    key = SPACING_SCHEDULES.get(timestep_spacing) if sigma_kind == "default" else sigma_kind
    return SCHEDULE_LABELS.get(key, "Automatic")


def sampler_fields(name: str, sigma_kind: str, timestep_spacing: str) -> dict[str, str]:
    """A1111's "Sampler" and "Schedule type" of an sdlab sampler and its sigma kind: "DPM++ 2M Karras" ->
    {"Sampler": "DPM++ 2M", "Schedule type": "Karras"}, as A1111 writes them (a name's schedule suffix goes)."""
    label = schedule_label(sigma_kind, timestep_spacing)
    return {"Sampler": name.removesuffix(f" {label}") if sigma_kind != "default" else name, "Schedule type": label}


def hashes_field(records) -> str | None:
    """"NAME: HASH, ..." of {"name", "hash"} records, as A1111 writes "Lora hashes" and "TI
    hashes" (':' and ',' taken out of names, so the list parses back); None for no records."""
    items = [f"{r['name'].replace(':', '').replace(',', '')}: {r['hash']}" for r in records]
    return ", ".join(items) or None


def quote(value: Any) -> str:
    """A1111 quoting: values with ``,`` ``:`` or newlines become JSON strings."""
    text = str(value)
    if text.startswith('"') or any(c in text for c in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Undo :func:`quote`; text that is not a valid JSON string is returned as is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, str):
            return value
    return text


def format_infotext(prompt: str, negative_prompt: str | None, params: dict[str, Any]) -> str:
    """Build the A1111 ``parameters`` text; parameters whose value is None are left out."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        if not _KEY_RE.fullmatch(str(key)) or str(key) != str(key).strip():
            raise ValueError(f"infotext key {key!r} may hold only letters, digits, spaces, - and /")
        parts.append(f"{key}: {quote(value)}")
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    lines.append(", ".join(parts))
    return "\n".join(lines)


def _typed(key: str, value: str):
    try:
        if key in INT_KEYS:
            return int(value)
        if key in FLOAT_KEYS:
            return float(value)
    except ValueError:
        pass
    return value


def parse_params(line: str) -> dict[str, Any]:
    """Parse ``Steps: 25, Sampler: Euler a, ...`` into a dict (known numeric keys typed)."""
    return {m["key"]: _typed(m["key"], unquote(m["val"].strip())) for m in _PARAM_RE.finditer(line)}


def parse_infotext(text: str) -> tuple[str, str, dict[str, Any]]:
    """Split infotext into ``(prompt, negative_prompt, params)``; inverse of format_infotext."""
    lines = text.strip("\n").split("\n")
    last = lines[-1] if lines else ""
    if len(_PARAM_RE.findall(last)) >= 3:  # A1111's rule: fewer pairs read as prompt text
        lines, params = lines[:-1], parse_params(last)
    else:
        params = {}
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if not in_negative and line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].lstrip(" ")
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), params


def save_png(path: str | Path, image, infotext: str, settings: dict | None = None, *,
             replace: bool = False) -> Path:
    """Save ``image`` as PNG with a ``parameters`` chunk (infotext) and a ``sdlab`` JSON chunk.
    An existing ``path`` is kept (OutputExists) unless ``replace``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS_KEY, infotext)
    if settings is not None:
        info.add_text(SETTINGS_KEY, json.dumps(settings, ensure_ascii=False, default=str))
    return atomic_save(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info), replace=replace)


def read_png_metadata(path: str | Path) -> dict[str, Any]:
    """Read a PNG's text chunks: raw ``parameters``, parsed prompt/negative/params, ``settings``."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            text = dict(getattr(img, "text", {}) or img.info)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image '{path}': {exc}") from exc
    text = {k: v for k, v in text.items() if isinstance(v, str)}
    raw = text.get(PARAMETERS_KEY)
    prompt, negative, params = parse_infotext(raw) if raw is not None else ("", "", {})
    settings = None
    if SETTINGS_KEY in text:
        try:
            settings = json.loads(text[SETTINGS_KEY])
        except ValueError:
            settings = None
    return {"parameters": raw, "prompt": prompt, "negative_prompt": negative, "params": params,
            "settings": settings, "text": text}
