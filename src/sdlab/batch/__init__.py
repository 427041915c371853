"""Batch generation: every row of a prompt file (JSONL, CSV, text, Parquet) rendered to its own
PNG plus a manifest, exactly once across kills and resumes, on Ray Data or in-process.

    from sdlab.batch import run_batch
    from sdlab import GenerationConfig
    summary = run_batch("prompts.jsonl", "out", GenerationConfig("", steps=20))
"""

from ..lazy import lazy_exports

__all__ = ["BatchOptions", "BatchSummary", "ModelSpec", "Renderer", "run_batch"]
__getattr__, __dir__ = lazy_exports(__name__, {".render": ("ModelSpec", "Renderer"),
                                               ".run": ("BatchOptions", "BatchSummary", "run_batch")})
