"""The shipped model's tokenizer: Stable Diffusion's own CLIP BPE vocabulary (Radford et al.
2021), built offline from the merge list shipped in sdlab.models, so prompts tokenize
exactly as in Stable Diffusion and rare identifiers ("sks") behave as they do there."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

from ..io.atomic import atomic_dir
from ..models.tokenizer import write_clip_tokenizer_files


def build_tokenizer(out_dir: str | Path, max_length: int = 77) -> CLIPTokenizer:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json) to `out_dir`, atomically."""
    with atomic_dir(out_dir) as tmp:
        write_clip_tokenizer_files(tmp, model_max_length=max_length)
    return CLIPTokenizer.from_pretrained(out_dir)
