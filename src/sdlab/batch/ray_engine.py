"""`sdlab batch` on Ray Data: the prompt file streamed by one read task, `map_batches` over a
fixed pool of Renderer actors (one model each; Ray restarts a killed actor and retries its
task), results streamed back to the driver, which writes the manifest."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterator, Optional

import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from .render import Renderer
from .rows import read_rows, to_columns

BLOCK_ROWS = 256        # rows per block the reader emits
ROW_BYTES = 256         # about one row's columns in Arrow, for blocks of one map batch


class PromptFileSource(Datasource):
    """A prompt file as a Ray dataset: one read task streams its rows in blocks (row ids come
    from the row order, so the file is read in one pass), leaving out the rows in `skip`."""

    def __init__(self, path: Path, fmt: str, skip: frozenset, block_rows: int = BLOCK_ROWS):
        super().__init__()
        self.path, self.fmt, self.skip, self.block_rows = str(path), fmt, skip, block_rows

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=[self.path], exec_stats=None)
        return [ReadTask(self._read, meta)]

    def _read(self):
        import pyarrow as pa

        chunk = []
        for row in read_rows(self.path, self.fmt, self.skip):
            chunk.append(row)
            if len(chunk) == self.block_rows:
                yield pa.Table.from_pydict(to_columns(chunk))
                chunk = []
        if chunk:
            yield pa.Table.from_pydict(to_columns(chunk))


def connect(address: Optional[str], cpus_needed: float) -> bool:
    """Join the Ray cluster at `address` (or $RAY_ADDRESS), or start a local one with at least
    `cpus_needed` CPUs; True when this call started Ray (and should shut it down)."""
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, int(cpus_needed + 0.999)), include_dashboard=False, **quiet)
    return True


def render_on_ray(prompts, fmt, done, spec, base, out, options) -> Iterator[list[dict]]:
    """Records of the rendered rows, a batch at a time, as the actors finish them."""
    gpus = 1 if (spec.device or "").startswith("cuda") else 0
    started = connect(options.address, options.workers * options.cpus_per_worker)
    ctx = ray.data.DataContext.get_current()
    block_bytes = ctx.target_max_block_size
    try:
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # Ray Data coalesces the reader's small blocks up to this size, and an actor renders a block
        # alone: at the default (128 MiB) a whole prompt file was one block for one actor while the
        # others idled. Blocks of about one map batch spread it over every actor.
        ctx.target_max_block_size = ROW_BYTES * options.batch_size
        ds = ray.data.read_datasource(PromptFileSource(prompts, fmt, done), override_num_blocks=1,
                                      ray_remote_args={"num_cpus": 0})
        ds = ds.map_batches(Renderer, fn_constructor_kwargs=dict(spec=spec, base=base.to_dict(), out=str(out),
                                                              threads=max(1, int(options.cpus_per_worker))),
                            batch_size=options.batch_size, batch_format="pyarrow", concurrency=options.workers,
                            num_cpus=options.cpus_per_worker, num_gpus=gpus)
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield [json.loads(r) for r in batch.column("record").to_pylist()]
    finally:
        ctx.target_max_block_size = block_bytes
        if started:
            ray.shutdown()
