"""The job table in SQLite: jobs survive restarts; states move queued -> running -> done/failed/cancelled.

A job left `running` by a process that died is marked `interrupted` when the store opens; it can
be queued again with `requeue`. One connection, guarded by a lock, in autocommit mode (WAL).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
TERMINAL = frozenset({"done", "failed", "cancelled", "interrupted"})
REQUEUEABLE = frozenset({"interrupted", "failed", "cancelled"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT UNIQUE NOT NULL,
  kind TEXT NOT NULL,
  state TEXT NOT NULL,
  params TEXT NOT NULL,
  result TEXT,
  error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL,
  started REAL,
  finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
"""
_COLUMNS = ("id", "kind", "state", "params", "result", "error", "attempts", "created", "started", "finished")


class QueueFull(Exception):
    """The queue holds its maximum number of waiting jobs."""


class JobStore:
    """SQLite-backed job records."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.recovered = self._mark_interrupted()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _mark_interrupted(self) -> int:
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET state='interrupted', finished=?, "
                                   "error='the server stopped while this job ran' WHERE state='running'",
                                   (time.time(),))
            return cur.rowcount

    def add(self, kind: str, params: dict, max_queued: Optional[int] = None) -> dict:
        """Insert a queued job; raises QueueFull when `max_queued` jobs already wait."""
        job_id = uuid.uuid4().hex[:16]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if max_queued is not None and self._count("queued") >= max_queued:
                    raise QueueFull(f"the queue is full ({max_queued} jobs waiting); try again later")
                self._db.execute("INSERT INTO jobs (id, kind, state, params, created) VALUES (?, ?, 'queued', ?, ?)",
                                 (job_id, kind, json.dumps(params), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def _count(self, state: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state=?", (state,)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {s: 0 for s in STATES} | dict(rows)

    def get(self, job_id: str) -> Optional[dict]:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _row(row) if row else None

    def list(self, state: Optional[str] = None, limit: int = 50, offset: int = 0) -> list[dict]:
        where, args = ("WHERE state=?", [state]) if state else ("", [])
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} ORDER BY seq DESC "
                                    "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [_row(r) for r in rows]

    def claim(self) -> Optional[dict]:
        """Move the oldest queued job to `running` and return it (None if none waits)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY seq LIMIT 1").fetchone()
                if row:
                    self._db.execute("UPDATE jobs SET state='running', started=?, attempts=attempts+1, error=NULL "
                                     "WHERE id=?", (time.time(), row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(row[0]) if row else None

    def finish(self, job_id: str, state: str, *, result: Any = None, error: Optional[str] = None) -> None:
        assert state in TERMINAL, state
        with self._lock:
            self._db.execute("UPDATE jobs SET state=?, result=?, error=?, finished=? WHERE id=?",
                             (state, None if result is None else json.dumps(result), error, time.time(), job_id))

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is not queued."""
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET state='cancelled', finished=?, error='cancelled by request' "
                                   "WHERE id=? AND state='queued'", (time.time(), job_id))
        return cur.rowcount == 1

    def requeue(self, job_id: str, max_queued: Optional[int] = None) -> bool:
        """Queue an interrupted, failed or cancelled job again (it runs from the start, same params)."""
        marks = ", ".join("?" * len(REQUEUEABLE))
        with self._lock:
            if max_queued is not None and self._count("queued") >= max_queued:
                raise QueueFull(f"the queue is full ({max_queued} jobs waiting); try again later")
            cur = self._db.execute(f"UPDATE jobs SET state='queued', result=NULL, error=NULL, started=NULL, "
                                   f"finished=NULL WHERE id=? AND state IN ({marks})", (job_id, *sorted(REQUEUEABLE)))
        return cur.rowcount == 1


def _row(row) -> dict:
    d = dict(zip(_COLUMNS, row))
    d["params"] = json.loads(d["params"])
    d["result"] = json.loads(d["result"]) if d["result"] else None
    return d
