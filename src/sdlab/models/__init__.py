"""Loading Stable Diffusion models from local paths only: diffusers folders and single files.

Configs for SD 1.5 / 2.1 and the CLIP BPE vocabulary ship under ``configs/``; nothing is
downloaded.
"""

from sdlab.lazy import lazy_exports

__all__ = ["Components", "load_pipeline_components", "model_hash", "resolve_device",
           "resolve_dtype", "clip_tokenizer", "write_clip_tokenizer_files"]
__getattr__, __dir__ = lazy_exports(__name__, {      # hashing is torch-free (`sdlab generate --server`)
    ".devices": ("resolve_device", "resolve_dtype"), ".hashing": ("model_hash",),
    ".loader": ("Components", "load_pipeline_components"),
    ".tokenizer": ("clip_tokenizer", "write_clip_tokenizer_files")})
