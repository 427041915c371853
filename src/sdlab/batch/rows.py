"""Prompt files for `sdlab batch`: rows read one at a time from JSONL, CSV, text (one prompt a
line) or Parquet, each with its row index, its id (the file name of its image) and its overrides
of the batch's generation settings, which GenerationConfig checks as it checks any setting."""

from __future__ import annotations

import csv
import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..config import MAX_SEED, GenerationConfig, settings_of
from ..errors import ConfigError
from ..io.paths import safe_component

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".txt": "text", ".parquet": "parquet"}
# GenerationConfig fields a row may set (one image per row: no batch settings; txt2img: no strength)
ROW_SETTINGS = ("prompt", "negative_prompt", "steps", "cfg_scale", "sampler", "seed", "width", "height",
                "guidance_rescale")
ALIASES = {"cfg": "cfg_scale", "negative": "negative_prompt"}
EXTRA_KEYS = ("id", "size", "lora")
ALLOWED = ROW_SETTINGS + tuple(ALIASES) + EXTRA_KEYS
PARQUET_BATCH = 1024        # rows read from a Parquet file at a time


@dataclass(frozen=True)
class Row:
    """One input row: `index` (its 0-based position among the rows), `id` (its image is
    ID.png), `values` (the row's fields as given) or `error` (why the row could not be read)."""

    index: int
    id: str
    values: dict
    error: Optional[str] = None


def input_format(path: str | Path, fmt: Optional[str] = None) -> str:
    """The format of a prompt file: `fmt`, else by its extension (ConfigError naming the known ones)."""
    if fmt is not None:
        if fmt not in set(FORMATS.values()):
            raise ConfigError(f"prompt file format must be one of {', '.join(sorted(set(FORMATS.values())))}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"cannot tell the format of '{path}' from its extension; use one of "
                          f"{', '.join(FORMATS)} or give --format")
    return FORMATS[suffix]


def check_input(path: str | Path, fmt: str) -> None:
    """ConfigError before any work: the file is missing, or its columns (CSV header, Parquet
    schema) hold a name a row may not set, or no prompt column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file '{path}' does not exist")
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            _check_columns(next(csv.reader(f), []), path)
    elif fmt == "parquet":
        _check_columns(_parquet(path).schema_arrow.names, path)


def _check_columns(names, path: Path) -> None:
    unknown = [n for n in names if n not in ALLOWED]
    if unknown:
        raise ConfigError(f"'{path}': unknown column {unknown[0]!r}; a row may set {', '.join(ALLOWED)}")
    if "prompt" not in names:
        raise ConfigError(f"'{path}': no 'prompt' column (columns: {', '.join(names) or 'none'})")


def read_rows(path: str | Path, fmt: str, skip: frozenset = frozenset()) -> Iterator[Row]:
    """The rows of the prompt file in order, one at a time (the file is never read whole); rows
    whose id is in `skip` (done in an earlier run) are left out. A row that cannot be read comes
    with its error."""
    reader = {"text": _text_values, "jsonl": _jsonl_values, "csv": _csv_values, "parquet": _parquet_values}[fmt]
    for index, values in enumerate(reader(Path(path))):
        row = _row(index, values)
        if row.id not in skip:
            yield row


def _row(index: int, values) -> Row:
    default_id = f"{index:08d}"
    if isinstance(values, Exception):
        return Row(index, default_id, {}, str(values))
    given = values.get("id")
    if given is None or given == "":
        return Row(index, default_id, values)
    try:
        return Row(index, row_id(given), values)
    except ConfigError as err:
        return Row(index, default_id, values, str(err))


def row_id(value) -> str:
    """A row's own id as a file name: one path component not starting with '.'."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    safe_component(text, "a row id")
    if text.startswith("."):
        raise ConfigError(f"a row id must not start with '.', got {text!r}")
    return text


def _text_values(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip():
                yield {"prompt": line}


def _jsonl_values(path: Path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as err:
                yield ConfigError(f"line {number}: not JSON ({err.msg})")
                continue
            if isinstance(value, str):
                value = {"prompt": value}
            yield value if isinstance(value, dict) else ConfigError(
                f"line {number}: a row must be a JSON object or a prompt string, got {type(value).__name__}")


def _csv_values(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            yield {k: v for k, v in record.items() if k is not None and v not in (None, "")}


def _parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading Parquet needs pyarrow: pip install 'sdlab[ray]'") from None
    return pq.ParquetFile(path)


def _parquet_values(path: Path):
    for batch in _parquet(path).iter_batches(batch_size=PARQUET_BATCH):
        for record in batch.to_pylist():
            yield {k: v for k, v in record.items() if v is not None}


# --- a row's settings --------------------------------------------------------------------------
def row_config(row: Row, base: GenerationConfig) -> tuple[GenerationConfig, list[str]]:
    """(the row's GenerationConfig, its LoRA specs "FILE[:SCALE]"): `base` with the row's
    overrides, checked by GenerationConfig; a row without a seed takes base.seed + its index
    (mod 2^32). ConfigError names the field and what is allowed."""
    values = dict(row.values)
    unknown = [k for k in values if k not in ALLOWED]
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r}; a row may set {', '.join(ALLOWED)}")
    for alias, name in ALIASES.items():
        if alias in values:
            if name in values:
                raise ConfigError(f"give {name} or {alias}, not both")
            values[name] = values.pop(alias)
    if "size" in values:
        values.update(_size(values.pop("size")))
    loras = _loras(values.pop("lora", None))
    values.pop("id", None)
    if "prompt" not in values:
        raise ConfigError("the row has no prompt")
    kinds = {name: kind for name, (_, kind, _) in settings_of(GenerationConfig).items()}
    fields = {k: _typed(k, v, kinds[k]) for k, v in values.items()}
    fields.setdefault("seed", (base.seed + row.index) % (MAX_SEED + 1))
    return dataclasses.replace(base, **fields), loras


def _typed(name: str, value, kind):
    """A CSV cell (or a JSON string) as the field's number type; other values as given."""
    if not isinstance(value, str):
        return value
    for number in (int, float):
        if number in (kind, *typing.get_args(kind)):
            try:
                return number(value)
            except ValueError:
                raise ConfigError(f"{name} must be {'an integer' if number is int else 'a number'}, "
                                  f"got {value!r}") from None
    return value


def _size(value) -> dict:
    """"WxH" or one number (a square) -> {"width", "height"}."""
    text = str(value).lower()
    parts = text.split("x") if "x" in text else [text, text]
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"size must be WIDTHxHEIGHT or one number, as in 512x768, got {value!r}") from None
    return {"width": width, "height": height}


def _loras(value) -> list[str]:
    """A row's `lora`: "FILE[:SCALE]", several joined by ';', or a list of them."""
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(";")
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"lora must be \"FILE[:SCALE]\" or a list of them, got {value!r}")
    return [v.strip() for v in items if v.strip()]


def row_record(row: Row, **fields) -> dict:
    """The manifest record of a row (id, index, then `fields`)."""
    return {"id": row.id, "index": row.index, **fields}


def to_columns(rows: list[Row]) -> dict[str, list]:
    """Rows as the columns of one batch (what Ray Data blocks hold): values as JSON text, so
    rows with different fields share one schema."""
    return {"index": [r.index for r in rows], "id": [r.id for r in rows],
            "values": [json.dumps(r.values, ensure_ascii=False, default=str) for r in rows],
            "error": [r.error for r in rows]}


def from_columns(batch) -> list[Row]:
    """The rows of a batch (a dict of columns, or a pyarrow table) made by `to_columns`."""
    cols = batch.to_pydict() if hasattr(batch, "to_pydict") else {k: list(v) for k, v in batch.items()}
    return [Row(int(i), str(r), json.loads(v), e or None)
            for i, r, v, e in zip(cols["index"], cols["id"], cols["values"], cols["error"])]
