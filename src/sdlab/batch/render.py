"""The model actor of `sdlab batch`: loads the model once, then renders batches of rows, one
PNG per row (AUTOMATIC1111 infotext + sdlab settings), written atomically under a name that
only that row id has, never replaced. Each row samples alone, so its pixels do not depend on
which rows share its batch or its worker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..config import GenerationConfig
from ..errors import ConfigError, SdlabError
from ..io.atomic import OutputExists
from .rows import Row, from_columns, row_config, row_record

if TYPE_CHECKING:
    import torch

log = logging.getLogger("sdlab.batch")
# what decides a row's image, compared when its file is already there
KEY_FIELDS = ("prompt", "negative_prompt", "steps", "cfg_scale", "sampler", "seed", "width", "height",
              "guidance_rescale", "model_hash", "loras", "embeddings", "vae")


@dataclass(frozen=True)
class ModelSpec:
    """How every actor loads the model: path (None: shipped), dtype, device, VAE, and what is
    applied to every row (embedding files, LoRA "FILE[:SCALE]" specs, <lora:...> tag folders).
    Relative paths are taken from `base_dir` (the folder `sdlab batch` ran in)."""

    model: Optional[str] = None
    dtype: Optional[str] = None
    device: Optional[str] = None
    vae: Optional[str] = None
    embeddings: tuple[str, ...] = ()
    loras: tuple[str, ...] = ()
    lora_dirs: tuple[str, ...] = ()
    base_dir: str = "."

    def path(self, p: str) -> str:
        return str(Path(self.base_dir, p))


def load_pipeline(spec: ModelSpec):
    """The Pipeline of `spec`, with its embeddings and LoRAs applied."""
    from ..cli.generate import lora_spec
    from ..pipeline import Pipeline

    pipe = Pipeline.load(spec.model and spec.path(spec.model), dtype=spec.dtype, device=spec.device,
                         vae=spec.vae and spec.path(spec.vae))
    for path in spec.embeddings:
        pipe.load_embedding(spec.path(path))
    for item in spec.loras:
        path, scale = lora_spec(spec.path(item))
        pipe.load_lora(path, scale)
    pipe.lora_dirs = [Path(spec.path(d)) for d in spec.lora_dirs]
    return pipe


class Renderer:
    """Callable on a batch of rows (rows.to_columns), returning {"record": [manifest record
    as JSON text, ...]}: Ray Data's map_batches builds one per actor; the in-process run builds one."""

    def __init__(self, spec: ModelSpec, base: dict, out: str, threads: Optional[int] = None):
        if threads is not None:      # an actor uses the CPUs Ray reserved for it, whatever OMP_NUM_THREADS it inherited
            import torch

            torch.set_num_threads(threads)
        self.spec, self.base, self.out = spec, GenerationConfig(**base), Path(out)
        self.pipe = load_pipeline(spec)
        self.pristine = Pristine(self.pipe)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"     # recorded with each row it renders

    def __call__(self, batch) -> dict:
        return {"record": [json.dumps({**self.render(row), "worker": self.worker}, ensure_ascii=False, default=str)
                           for row in from_columns(batch)]}

    def render(self, row: Row) -> dict:
        """The row's image written (or found written, with the same settings): its record;
        any error of the row is its record's error, and the batch goes on."""
        if row.error is not None:
            return row_record(row, status="failed", file=None, seed=None, settings=None, error=row.error)
        try:
            config, loras = row_config(row, self.base)
            return row_record(row, status="ok", file=f"{row.id}.png", seed=config.seed,
                              settings=self.write(row, config, loras), error=None)
        except SdlabError as err:
            return row_record(row, status="failed", file=None, seed=None, settings=None, error=str(err))
        except Exception as err:    # a bug or a broken file, not bad input: this row fails, the rest go on
            log.exception("row %s failed", row.id)
            return row_record(row, status="failed", file=None, seed=None, settings=None,
                              error=f"internal error: {type(err).__name__}: {err}")

    def write(self, row: Row, config: GenerationConfig, loras: list[str]) -> dict:
        """Render the row into ID.png unless that file holds it already; its key settings."""
        from ..io.metadata import save_png

        path = self.out / f"{row.id}.png"
        if path.exists():
            return self.existing(path, row, config, loras)
        with self.lora_context(config, loras):
            result = self.pipe.generate(config)
            settings = {**result.settings[0], "batch_row": {"id": row.id, "index": row.index}}
            key = key_settings(settings)
        try:
            save_png(path, result.images[0], result.infotexts[0], settings)
        except OutputExists:        # another process wrote it meanwhile (a run killed and resumed)
            return self.existing(path, row, config, loras)
        return key

    def existing(self, path: Path, row: Row, config: GenerationConfig, loras: list[str]) -> dict:
        """The key settings of a row's file written before, if they are this row's; else ConfigError."""
        from ..io.metadata import read_png_metadata

        found = read_png_metadata(path).get("settings") or {}
        expected = self.expected(config, loras)
        key = key_settings(found)
        if {k: key.get(k) for k in expected} != expected:
            changed = [k for k in expected if key.get(k) != expected[k]]
            raise ConfigError(f"'{path.name}' exists with other settings ({', '.join(changed)}): another row or "
                              "another batch made it; give this batch another --out, or rows their own ids")
        return key

    def expected(self, config: GenerationConfig, loras: list[str]) -> dict:
        """The key settings this row's image would have, without sampling it (its LoRAs are
        merged for the moment, to record them as rendering does)."""
        width, height = self.pipe.size(config)
        with self.lora_context(config, loras), self.pipe.prompt_loras(config.prompt):
            key = key_settings(self.pipe.settings_for(config, config.seed, width, height))
        return json.loads(json.dumps(key, default=str))     # as read back from the PNG

    def lora_context(self, config: GenerationConfig, loras: list[str]):
        """The row's own LoRAs merged, and the weights put back exactly afterwards."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.pristine.guard(bool(loras) or "<lora:" in config.prompt))
        stack.enter_context(row_loras(self.pipe, self.spec, loras))
        return stack


def key_settings(settings: dict) -> dict:
    """The settings that decide a row's image (KEY_FIELDS present in `settings`)."""
    return {k: settings[k] for k in KEY_FIELDS if k in settings}


@contextlib.contextmanager
def row_loras(pipe, spec: ModelSpec, loras: list[str]):
    """A row's own LoRA files merged for its image, then taken out."""
    from ..cli.generate import lora_spec

    handles = []
    try:
        for item in loras:
            path, scale = lora_spec(spec.path(item))
            handles.append(pipe.load_lora(path, scale))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


@dataclass
class Pristine:
    """The model's weights as loaded, put back bit for bit after a row that merged a LoRA
    (merging and subtracting a delta is not exact in floating point, and a row's pixels must
    not depend on the rows its worker rendered before). Copied on the first such row."""

    pipe: object
    saved: Optional[list] = field(default=None)

    def params(self) -> list[torch.Tensor]:
        c = self.pipe.c
        return [p for m in (c.unet, c.text_encoder) for p in m.parameters()]

    @contextlib.contextmanager
    def guard(self, active: bool):
        if not active:
            yield
            return
        if self.saved is None:
            self.saved = [p.detach().clone() for p in self.params()]
        try:
            yield
        finally:
            import torch            # here, not at import: `sdlab batch --help` stays torch-free

            with torch.no_grad():
                for p, s in zip(self.params(), self.saved):
                    if not torch.equal(p, s):
                        p.copy_(s)
