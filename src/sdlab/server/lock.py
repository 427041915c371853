"""One server per job queue: an exclusive lock (fcntl.flock) on a file in the state folder, held
for the life of the server, so that a second `sdlab serve` on the same folder is refused instead
of marking the first one's running job interrupted."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .settings import ServerSettings

LOCK_NAME = "server.lock"


class ServerBusy(ConfigError):
    """Another live server holds the queue's lock."""


class QueueLock:
    """The held lock; the file records the holder's pid. `release()` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, settings: ServerSettings) -> "QueueLock":
        """Take the lock of `settings`' queue, or raise ServerBusy naming the holder's pid."""
        path = settings.state_path / LOCK_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise ServerBusy(_busy_message(settings, holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> Optional[int]:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _busy_message(settings: ServerSettings, pid: Optional[int]) -> str:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    if settings.state_dir is not None:
        return (f"another sdlab serve is using the job queue in {settings.state_dir} ({who}); stop it or pass "
                "another --state-dir")
    return f"another sdlab serve is using {settings.output_dir} ({who}); stop it or pass another --output-dir"
