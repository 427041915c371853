"""Loading Stable Diffusion models from local paths only: diffusers folders and single files.

Configs for SD 1.5 / 2.1 and the CLIP BPE vocabulary ship under ``configs/``; nothing is
downloaded.
"""

from sdlab.models.devices import resolve_device, resolve_dtype
from sdlab.models.hashing import model_hash
from sdlab.models.loader import Components, load_pipeline_components
from sdlab.models.tokenizer import clip_tokenizer, write_clip_tokenizer_files

__all__ = ["Components", "load_pipeline_components", "model_hash", "resolve_device",
           "resolve_dtype", "clip_tokenizer", "write_clip_tokenizer_files"]
