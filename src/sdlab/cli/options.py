"""Command-line options derived from declared settings (sdlab.config.setting): flag, type,
default and help are read from the dataclass, so a setting is described in one place."""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING
from typing import Any

from ..config import SAME, settings_of


def add_config_arguments(parser: argparse.ArgumentParser, cls, names=None, **overrides: dict) -> None:
    """Add the option of each named field of `cls` (None: every field with a flag) to `parser`,
    in its Setting's group, with the field name as dest. `overrides[name]` adjusts one
    command's option: argparse keywords (default, help, nargs, ...) and `more`, a clause added
    after the default in the help. A bool field is a flag (store_true; for a True default
    store_false, absent from the parsed namespace unless given); a tuple field is repeatable."""
    declared = settings_of(cls)
    for name in names if names is not None else [n for n, (_, _, s) in declared.items() if s.option(n)]:
        default, kind, s = declared[name]
        kw = dict(overrides.get(name, {}))
        more = kw.pop("more", "")
        default = kw.pop("default", default if s.request_default is SAME else s.request_default)
        text = kw.pop("help", s.help)
        if s.choices is not None:
            text += f", one of: {', '.join(s.choices())}"
        kinds = (kind, *typing.get_args(kind))
        if default is MISSING:
            kw.setdefault("required", True)
            default = None
        if kind is bool:
            kw.setdefault("action", "store_false" if default else "store_true")
            default = argparse.SUPPRESS if default else False
        elif any(typing.get_origin(k) is tuple for k in kinds):
            kw.setdefault("action", "append")
            default = None if default is None else list(default)
        else:
            text += _default_text(default, s.default_text)
            kw["type"] = next((t for t in (int, float) if t in kinds), None)
        if kw.get("nargs") in ("+", "*") and not isinstance(default, list):
            default = [default]
        if kw.get("action") not in ("store_true", "store_false"):    # --lr LR, not --lr LEARNING_RATE
            kw.setdefault("metavar", s.option(name).lstrip("-").replace("-", "_").upper())
        target = argument_group(parser, s.group) if s.group else parser
        target.add_argument(s.option(name), *s.aliases, dest=name, default=default, help=text + more, **kw)


def argument_group(parser: argparse.ArgumentParser, title: str):
    """`parser`'s argument group of this title, made on first use."""
    return next((g for g in parser._action_groups if g.title == title), None) or parser.add_argument_group(title)


def _default_text(default: Any, text: str | None) -> str:
    """" (default 25)", " (default: random)" for None, or "" for an empty default."""
    if isinstance(default, list) and len(default) == 1:
        default = default[0]
    if default is None:
        return f" (default: {text})" if text else ""
    return "" if default == "" else f" (default {default})"


def parsed_values(cls, args: argparse.Namespace) -> dict:
    """{field: value} of `cls`'s settings that `args` holds (the inverse of add_config_arguments;
    a repeated option's list becomes the field's tuple)."""
    out = {}
    for name, (default, _, _) in settings_of(cls).items():
        if hasattr(args, name):
            value = getattr(args, name)
            out[name] = tuple(value) if isinstance(value, list) and isinstance(default, tuple) else value
    return out
