"""The manifest of a batch: `manifest.jsonl` in the output folder, one JSON record per row (id,
index, file, status, seed, settings, error), appended and fsynced as rows finish, so a killed run
loses at most the records in flight. A resumed run reads it to skip the rows already done; the
last record of a row id is its current one. Optionally also written as Parquet at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError

NAME = "manifest.jsonl"
PARQUET = "manifest.parquet"


class Manifest:
    """The manifest of folder `out`: `load()` it, `add()` records, `close()`."""

    def __init__(self, out: str | Path):
        self.path = Path(out) / NAME
        self.recorded: dict[str, tuple] = {}      # row id -> (status, file, error) of its last record
        self._file = None

    def load(self) -> "Manifest":
        """Read the records written so far; a last line a killed run left half-written is cut off."""
        if not self.path.exists():
            return self
        keep = 0
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    record = None
                if record is None:
                    if f.read(1):   # not the last line: damage a crash does not cause
                        raise ConfigError(f"'{self.path}' line {number} is damaged; fix or remove that line")
                    break
                self.recorded[record["id"]] = _summary(record)
                keep += len(line)
        if keep < self.path.stat().st_size:
            os.truncate(self.path, keep)
        return self

    def done(self) -> frozenset:
        """Ids of the rows whose image is written."""
        return frozenset(k for k, (status, _, _) in self.recorded.items() if status == "ok")

    def add(self, records: Iterable[dict]) -> list[dict]:
        """Append the records that say something new about their row (a row rendered again by a
        retried task, or failing again with the same error, is recorded once); returns those."""
        new = [r for r in records if self.recorded.get(r["id"]) != _summary(r)]
        if not new:
            return new
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in new))
        self._file.flush()
        os.fsync(self._file.fileno())
        for r in new:
            self.recorded[r["id"]] = _summary(r)
        return new

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write_parquet(self) -> Path:
        """manifest.parquet: the current record of every row, in row order (settings as JSON text)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..io.atomic import atomic_save

        latest: dict[str, dict] = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                settings = record.get("settings")
                latest[record["id"]] = {**record, "settings": None if settings is None else json.dumps(settings)}
        rows = sorted(latest.values(), key=lambda r: r["index"])
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("id", pa.string()), ("index", pa.int64()), ("file", pa.string()), ("status", pa.string()),
            ("seed", pa.int64()), ("settings", pa.string()), ("error", pa.string())]))
        return atomic_save(self.path.with_name(PARQUET), lambda tmp: pq.write_table(table, tmp))


def _summary(record: dict) -> tuple:
    return record.get("status"), record.get("file"), record.get("error")
