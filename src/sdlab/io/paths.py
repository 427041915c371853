"""Paths built from user input: a name must be one path component, checked where the path is
built; a file that exists is named in one message (sdlab never replaces a file it did not write)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

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



def offered_names(folders: Iterable, accept: Callable[[Path], bool]) -> list[str]:
    """The entries of `folders` that `accept` takes and that lie really inside their folder (no link
    or name leading out), by name; the first folder wins a name (A1111's model lists)."""
    names: dict[str, None] = {}
    for folder in folders:
        for entry in sorted(Path(folder).iterdir()):
            if _inside(entry, folder) and accept(entry):
                names.setdefault(entry.name)
    return list(names)


def find_offered(name: str, folders, accept: Callable[[Path], bool], what: str, option: str) -> Path:
    """The entry `name` of the first of `folders` that offers it; a ConfigError naming the choices
    (`what`: "VAE", "ControlNet", ...; `option`: the server option that sets the folders)."""
    if not folders:
        raise ConfigError(f"{what} {name!r}: this server has no folder of {what}s ({option} DIR)")
    for folder in folders:
        entry = Path(folder) / name
        if _inside(entry, folder) and accept(entry):
            return entry
    raise ConfigError(f"no {what} named {name!r}; this server offers: "
                      f"{', '.join(offered_names(folders, accept)) or 'none'}")


def _inside(entry: Path, folder) -> bool:
    return entry.exists() and entry.resolve().parent == Path(folder).resolve()
