"""`run_batch`: render every row of a prompt file into a folder, exactly once across kills and
resumes: on Ray Data (a pool of model actors, local or a cluster) or, without Ray or with
`local`, by the same Renderer in this process."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from ..config import GenerationConfig, check_settings, setting
from ..errors import ConfigError
from ..io.atomic import atomic_write_text
from ..io.outputs import output_folder
from .manifest import Manifest
from .render import ModelSpec, Renderer
from .rows import check_input, input_format, read_rows, to_columns

RUN_FILE = "batch.json"     # what the folder's batch was made with; a resume must match it


@dataclass(frozen=True)
class BatchOptions:
    """How `sdlab batch` runs (what it renders comes from GenerationConfig and the rows)."""

    workers: int = setting(1, "model actors, each loading the model once (Ray); one in-process renderer "
                              "with --local", lo=1, hi=100000, group="scale-out (Ray)")
    batch_size: int = setting(8, "rows an actor renders per task (images still sample one at a time)",
                              lo=1, hi=100000, group="scale-out (Ray)")
    cpus_per_worker: float = setting(1.0, "CPUs Ray reserves for each actor", lo=0.0, hi=1024.0,
                                     group="scale-out (Ray)")
    address: Optional[str] = setting(None, "Ray cluster to run on, e.g. ray://head:10001 (default: $RAY_ADDRESS, "
                                           "else a local Ray started for this run)", group="scale-out (Ray)")
    local: bool = setting(False, "run in this process, without Ray", group="scale-out (Ray)")
    manifest: str = setting("jsonl", "manifest format: jsonl (always written as rows finish) or parquet "
                                     "(manifest.parquet written at the end as well)", group="scale-out (Ray)")
    format: Optional[str] = setting(None, "prompt file format: jsonl, csv, text or parquet (default: by extension)")

    def __post_init__(self):
        check_settings(self)
        if self.manifest not in ("jsonl", "parquet"):
            raise ConfigError(f"manifest must be jsonl or parquet, got {self.manifest!r}")


@dataclass
class BatchSummary:
    """What a run did: rows rendered or found done (ok), failed, done before it (skipped), time."""

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    engine: str = "local"
    errors: list = field(default_factory=list)      # (id, error) of the first failures

    @property
    def rows_per_s(self) -> float:
        return (self.ok + self.failed) / self.seconds if self.seconds else 0.0


def run_batch(prompts: str | Path, out: str | Path, base: GenerationConfig, spec: ModelSpec = ModelSpec(),
              options: BatchOptions = BatchOptions(), progress: Optional[Callable[[list], None]] = None) -> BatchSummary:
    """Render each row of `prompts` to OUT/ID.png with `base`'s settings and the row's overrides;
    rows done by an earlier run into `out` (same settings) are skipped. `progress(records)` is
    called as rows finish."""
    fmt = input_format(prompts, options.format)
    prompts = Path(prompts).resolve()
    check_input(prompts, fmt)
    out = Path(out).resolve()
    base = _one_per_row(base)
    _claim_folder(out, base, spec)
    manifest = Manifest(out).load()
    done = manifest.done()
    summary = BatchSummary(skipped=len(done), engine="local" if options.local or not ray_available() else "ray")
    start = time.perf_counter()
    batches = (_local_batches if summary.engine == "local" else _ray_batches)(prompts, fmt, done, spec, base, out,
                                                                             options)
    try:
        for records in batches:
            for r in manifest.add(records):
                summary.ok += r["status"] == "ok"
                summary.failed += r["status"] == "failed"
                if r["status"] == "failed" and len(summary.errors) < 20:
                    summary.errors.append((r["id"], r["error"]))
            if progress is not None:
                progress(records)
    finally:
        batches.close()
        manifest.close()
    summary.seconds = time.perf_counter() - start
    if options.manifest == "parquet":
        manifest.write_parquet()
    return summary


def ray_available() -> bool:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _one_per_row(base: GenerationConfig) -> GenerationConfig:
    """`base` checked for one image per row (batch settings 1)."""
    if base.batch_size != 1 or base.batch_count != 1:
        raise ConfigError("a batch renders one image per row: leave batch_size and batch_count at 1")
    return base


def _model_scale(spec: ModelSpec) -> float:
    """The CFG scale the batch's model recommends (its generation_defaults.json), read without loading it."""
    from ..models.generation_defaults import model_default

    model = spec.model
    if model is not None and (Path(spec.base_dir) / model).exists():
        model = str(Path(spec.base_dir) / model)           # relative to where `sdlab batch` ran
    return model_default(model, "cfg_scale")


def _run_settings(base: GenerationConfig, spec: ModelSpec) -> dict:
    settings = {k: v for k, v in base.to_dict().items() if k not in ("prompt", "batch_size", "batch_count")}
    if settings.get("cfg_scale") is None:       # the scale used, so a resume that spells it out is the same batch
        settings["cfg_scale"] = _model_scale(spec)
    model = {k: v for k, v in asdict(spec).items() if k not in ("base_dir", "device", "dtype")}
    return {"sdlab_batch": 1, "settings": settings, "model": model, "base_dir": spec.base_dir}


def _claim_folder(out: Path, base: GenerationConfig, spec: ModelSpec) -> None:
    """Make `out` this batch's folder: new or empty, or a folder of the same batch (resume);
    a folder of something else, or of a batch with other settings, is refused."""
    mine = _run_settings(base, spec)
    run_file = out / RUN_FILE
    if run_file.is_file():
        theirs = json.loads(run_file.read_text())
        if theirs.get("settings", {}).get("cfg_scale", 0) is None:     # written before the scale was resolved
            theirs["settings"]["cfg_scale"] = _model_scale(spec)
        changed = [f"{k} {theirs['settings'].get(k)!r} -> {v!r}" for k, v in mine["settings"].items()
                   if theirs.get("settings", {}).get(k) != v]
        changed += [f"{k} {theirs['model'].get(k)!r} -> {v!r}" for k, v in mine["model"].items()
                    if theirs.get("model", {}).get(k) != (list(v) if isinstance(v, tuple) else v)]
        if changed:
            raise ConfigError(f"'{out}' holds a batch made with other settings ({', '.join(changed)}); resume it with "
                              "the same options, or give another --out")
        output_folder(out)          # a killed run's temp files go
        return
    if out.exists() and any(p.name != ".DS_Store" for p in out.iterdir()):
        raise ConfigError(f"'{out}' is not empty and holds no batch ({RUN_FILE}); give a new or empty --out")
    output_folder(out)
    atomic_write_text(run_file, json.dumps(mine, indent=2, default=str) + "\n", replace=False)


def _chunks(rows, size: int) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _local_batches(prompts, fmt, done, spec, base, out, options) -> Iterator[list[dict]]:
    renderer = Renderer(spec, base.to_dict(), str(out))
    for chunk in _chunks(read_rows(prompts, fmt, done), options.batch_size):
        yield [json.loads(r) for r in renderer(to_columns(chunk))["record"]]


def _ray_batches(prompts, fmt, done, spec, base, out, options) -> Iterator[list[dict]]:
    from .ray_engine import render_on_ray

    yield from render_on_ray(prompts, fmt, done, spec, base, out, options)

