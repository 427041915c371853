"""The axes of an X/Y/Z plot (AUTOMATIC1111's "X/Y/Z plot" script): any generation setting
with a CLI option, by its option name (`steps`, `cfg-scale`, `sampler`, ...), read from
GenerationConfig's declared settings so that a new setting is an axis at once; plus
`prompt-sr` (A1111's "Prompt S/R": the first value is searched in the prompt and negative
prompt, each value replaces it) and `lora-scale` (the scale of the grid's LoRA files).

Values are comma-separated (CSV, so a quoted value may hold a comma); numbers take A1111's
ranges: `10-30` (step 1), `10-30 (+10)` (a step), `10-30 [3]` (a count, evenly spaced).
"""

from __future__ import annotations

import csv
import io
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Sequence

from ..config import GenerationConfig, settings_of
from ..errors import ConfigError

PROMPT_SR = "prompt-sr"
LORA_SCALE = "lora-scale"
NOT_AXES = ("batch_size", "batch_count")    # a grid cell is one image
MAX_VALUES = 100                             # values of one axis

_NUM = r"[+-]?\s*\d+(?:\.\d*)?(?:e[+-]?\d+)?"
_RANGE = re.compile(rf"^\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*({_NUM})\s*\)|\[\s*(\d+)\s*\])?\s*$", re.I)


@dataclass(frozen=True)
class Axis:
    """One axis: its name as written (`cfg-scale`), the GenerationConfig field it sets (None for
    prompt-sr and lora-scale), its values and their labels."""

    name: str
    field: str | None
    values: tuple
    labels: tuple[str, ...]


def setting_axes() -> dict[str, str]:
    """{axis name: GenerationConfig field} of every setting with a CLI option, batch ones aside."""
    out = {}
    for name, (_, kind, s) in settings_of(GenerationConfig).items():
        option = s.option(name)
        if option and name not in NOT_AXES and _base_type(kind) is not None:
            out[option.lstrip("-")] = name
    return out


def axis_names() -> list[str]:
    """Every axis name, settings first."""
    return [*setting_axes(), PROMPT_SR, LORA_SCALE]


def _base_type(kind) -> type | None:
    """int, float, bool or str of a setting's type (Optional[int] -> int); None for others (tuples)."""
    kinds = [k for k in (kind, *typing.get_args(kind)) if k is not type(None)]
    return next((t for t in (bool, int, float, str) if t in kinds), None)


def _allowed() -> str:
    return f"allowed axes: {', '.join(axis_names())}"


def split_axis(spec: str) -> tuple[str, str]:
    """"steps=10,20,30" -> ("steps", "10,20,30")."""
    name, sep, values = str(spec).partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"a grid axis is NAME=VALUES, e.g. steps=10,20,30; got {spec!r}; {_allowed()}")
    return name.strip(), values


def split_values(text: str) -> list[str]:
    """"1, 4,\"a, b\"" -> ["1", "4", "a, b"] (CSV, spaces around values dropped)."""
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    return [v.strip() for row in rows for v in row if v.strip()]


def make_axis(name: str, values: str | Sequence[Any]) -> Axis:
    """The axis `name` (an option name, or the field name: `cfg-scale` / `cfg_scale`) with
    `values`: a string as on the command line, or a list of values (strings are parsed)."""
    axes = setting_axes()
    key = str(name).strip().lower()
    key = next((a for a, f in axes.items() if key in (a, f)), key)
    if key not in axes and key not in (PROMPT_SR, LORA_SCALE):
        raise ConfigError(f"unknown grid axis {name!r}; {_allowed()}")
    items = split_values(values) if isinstance(values, str) else list(values)
    if not items:
        raise ConfigError(f"grid axis {key} has no values; give them as {key}=A,B,C")
    if key == PROMPT_SR:
        parsed = [str(v) for v in items]
        return Axis(key, None, tuple(parsed), tuple(parsed))
    kind = float if key == LORA_SCALE else _base_type(settings_of(GenerationConfig)[axes[key]][1])
    parsed = [p for v in items for p in _parse(key, v, kind)]
    if len(parsed) > MAX_VALUES:
        raise ConfigError(f"grid axis {key} has {len(parsed)} values; at most {MAX_VALUES}")
    return Axis(key, axes.get(key), tuple(parsed), tuple(f"{key}: {_show(v)}" for v in parsed))


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _parse(key: str, value, kind: type) -> list:
    """One value (or an A1111 range) of an axis of type `kind`."""
    if kind is str:
        return [str(value)]
    if not isinstance(value, str):
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"grid axis {key}: {value!r} is not {_a(kind)}")
        return [kind(value) if kind is float else value]
    if kind is bool:
        word = value.strip().lower()
        if word not in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            raise ConfigError(f"grid axis {key}: {value!r} is not true or false")
        return [word in ("true", "yes", "1", "on")]
    match = _RANGE.match(value)
    if match:
        return _expand(key, kind, *match.groups())
    try:
        return [_number(value, kind)]
    except ValueError:
        raise ConfigError(f"grid axis {key}: {value!r} is not {_a(kind)} (e.g. {key}=1,2,3 or a range "
                          f"{key}=10-30 (+10) or {key}=10-30 [3])") from None


def _a(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a string")


def _number(text: str, kind: type):
    text = text.replace(" ", "")
    if kind is int:
        value = float(text)
        if not value.is_integer():
            raise ValueError(text)
        return int(value)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _expand(key: str, kind: type, start: str, end: str, step: str | None, count: str | None) -> list:
    """A1111's ranges: start-end (step 1), start-end (+step), start-end [count], end included."""
    try:
        a, b = _number(start, kind), _number(end, kind)
        d = _number(step, kind) if step else None
    except ValueError:
        raise ConfigError(f"grid axis {key}: the range {start}-{end} needs {_a(kind)}s") from None
    if count is not None:
        n = int(count)
        if not 1 <= n <= MAX_VALUES:
            raise ConfigError(f"grid axis {key}: a range's [count] must be between 1 and {MAX_VALUES}, got {n}")
        values = [a + (b - a) * i / max(n - 1, 1) for i in range(n)]
        return [int(v) if kind is int else round(v, 10) for v in values]
    d = d if d is not None else (1 if b >= a else -1)
    if d == 0 or (b - a) * d < 0:
        raise ConfigError(f"grid axis {key}: the step ({d:g}) of the range {start}-{end} must be non-zero and "
                          "point from start to end")
    n = math.floor((b - a) / d + 1e-9) + 1
    if n > MAX_VALUES:
        raise ConfigError(f"grid axis {key}: the range {start}-{end} has {n} values; at most {MAX_VALUES}")
    return [a + i * d if kind is int else round(a + i * d, 10) for i in range(n)]


def parse_axis(spec: str) -> Axis:
    """An axis from "NAME=VALUES", as `sdlab grid --x` takes it."""
    return make_axis(*split_axis(spec))
