"""Paths built from user input: a name must be one path component, checked where the path is
built; a file that exists is named in one message (sdlab never replaces a file it did not write)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

MAX_COMPONENT = 100     # characters; filesystems allow 255 bytes, and a suffix may follow


def safe_component(name, what: str = "name", max_length: int = MAX_COMPONENT) -> str:
    """`name` if it is one path component (no '/', '\\', NUL or control characters, not '.',
    '..' or empty, at most `max_length` characters); else a ConfigError naming `what`."""
    if not isinstance(name, str):
        raise ConfigError(f"{what} must be a string, got {type(name).__name__}")
    if (not name or name in (".", "..") or len(name) > max_length or "/" in name or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise ConfigError(f"{what} must be a single file name (1 to {max_length} characters, no '/', '\\', NUL "
                          f"or control characters, not '.' or '..'); got {name!r}")
    return name


def exists_message(path: str | Path, option: str | None = None) -> str:
    """"'x.gif' exists; choose another --out or remove it" (`option` None: "another name")."""
    return f"'{path}' exists; choose another {option or 'name'} or remove it"

