"""Atomic writes: a reader sees the old file/folder or the complete new one, never a partial one.

Files are written to a temporary sibling ``.NAME.tmp-PID-XXXXXXXX``, fsynced and moved into
place with ``os.replace`` (or, with ``replace=False``, hard-linked so an existing file is never
replaced). Temp entries a killed process left behind are removed by ``clean_stale_temps``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError
from .paths import exists_message

# sdlab's temp names: .NAME.tmp-PID-XXXXXXXX (older sdlab: without the PID), .NAME.old-PID-XXXXXXXX
_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")
LEGACY_STALE_S = 3600.0     # a temp entry without a PID counts as left behind after an hour untouched


class OutputExists(ConfigError):
    """The file to write is already there, and sdlab does not replace files it did not write."""


def _sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file or folder; silently skipped where the platform does not allow it."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish_new(tmp: Path, path: Path) -> None:
    """Give the complete `tmp` the name `path` unless `path` exists (OutputExists then)."""
    try:
        os.link(tmp, path)              # atomic, and fails if the name is taken
    except FileExistsError:
        raise OutputExists(exists_message(path)) from None
    except OSError:                     # a filesystem without hard links: claim the name, then fill it
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise OutputExists(exists_message(path)) from None
        os.replace(tmp, path)
        return
    with contextlib.suppress(OSError):  # a leftover is removed by clean_stale_temps later
        tmp.unlink()


def atomic_save(path: str | Path, writer_fn: Callable[[Path], object], *, replace: bool = True) -> Path:
    """Call ``writer_fn(tmp_path)`` to write a temp file beside ``path``, then move it into place.

    If ``writer_fn`` raises, the temp file is removed and any previous ``path`` is untouched.
    ``replace=False``: an existing ``path`` is kept and OutputExists raised instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    with open(tmp, "xb"):  # created with the usual umask permissions
        pass
    try:
        writer_fn(tmp)
        _fsync_path(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_path(path.parent, directory=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, replace: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_save(path, lambda tmp: Path(tmp).write_bytes(data), replace=replace)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8", *, replace: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding), replace=replace)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temp folder to fill; on success it replaces ``path``, on error it is removed.

    The previous folder is moved aside only once the new one is complete, then deleted. (A
    crash between the two renames leaves the old copy as ``.NAME.old-*`` beside ``path``.)
    ``replace=False``: an existing ``path`` is kept and OutputExists raised, before the work
    and again when the folder is published (the name is claimed with mkdir, then filled).
    """
    path = Path(path)
    if not replace and (path.exists() or path.is_symlink()):
        raise OutputExists(exists_message(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                _fsync_path(Path(root) / name)
        old = None
        if not replace:
            _claim_dir(path)
        elif path.exists() or path.is_symlink():
            old = _sibling(path, "old")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            elif not replace:
                with contextlib.suppress(OSError):
                    path.rmdir()        # our empty claim, unless someone wrote into it
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_path(path.parent, directory=True)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _claim_dir(path: Path) -> None:
    """Take the name `path` with an empty folder (OutputExists if it is taken)."""
    try:
        path.mkdir()
    except FileExistsError:
        raise OutputExists(exists_message(path)) from None


def _writer_gone(pid: int, modified: float) -> bool:
    """No live process `pid` wrote the entry last modified at `modified` (none has that pid,
    or the one that has it started later: the pid was reused)."""
    import psutil       # accelerate's dependency

    if pid == os.getpid():
        return False
    try:
        return psutil.Process(pid).create_time() > modified + 1.0
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:    # no access to that process: assume it is alive
        return False


def _last_modified(entry: Path, renames: bool) -> float:
    """When `entry` (and, for a folder, anything in it) was last written; `renames`: or renamed
    (the ctime: atomic_dir's `.old-` copy keeps the folder's old mtime)."""
    def changed(stat: os.stat_result) -> float:
        return max(stat.st_mtime, stat.st_ctime) if renames else stat.st_mtime

    newest = changed(entry.lstat())
    if entry.is_dir() and not entry.is_symlink():
        for root, dirs, files in os.walk(entry):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, changed(os.lstat(os.path.join(root, name))))
    return newest


def _is_stale(match: re.Match, entry: Path) -> bool:
    if match["pid"] is not None:
        return _writer_gone(int(match["pid"]), _last_modified(entry, renames=True))
    return time.time() - _last_modified(entry, renames=False) > LEGACY_STALE_S


def _drop(match: re.Match, entry: Path) -> None:
    """Remove a stale temp entry; a stale `.old-` copy whose folder is missing is put back."""
    target = entry.parent / match["target"]
    if match["kind"] == "old" and not (target.exists() or target.is_symlink()):
        os.replace(entry, target)       # the crash came between atomic_dir's two renames
    elif entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def clean_stale_temps(folder: str | Path, depth: int = 0) -> list[Path]:
    """Remove the temp files and folders of sdlab's atomic writes that a killed process left in
    `folder` (and in its subfolders, `depth` levels down); entries a live process may still be
    writing are kept. Returns what was removed (or restored)."""
    folder, removed = Path(folder), []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        try:
            if match and _is_stale(match, entry):
                _drop(match, entry)
                removed.append(entry)
            elif not match and depth > 0 and entry.is_dir() and not entry.is_symlink():
                removed += clean_stale_temps(entry, depth - 1)
        except OSError:     # gone meanwhile, or not ours to remove: leave it
            continue
    return removed
