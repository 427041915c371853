"""The CLIP BPE tokenizer (Radford et al. 2021) built offline from the shipped BPE merge list.

SD 1.x uses OpenAI's CLIP ViT-L/14 tokenizer, SD 2.x the same vocabulary with pad token "!"
(OpenCLIP). Both are built here from ``configs/clip_bpe/bpe_simple_vocab_16e6.txt.gz`` so that
nothing is downloaded.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

BPE_FILE = Path(__file__).parent / "configs" / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP keeps the first 49152 - 256 - 2 merges of the list (the first line is a header).
N_MERGES = VOCAB_SIZE - 2 * 256 - 2


def byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible map from the 256 byte values to printable unicode characters."""
    keep = list(range(ord("!"), ord("~") + 1))
    keep += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}  # insertion order matters: it fixes the token ids
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    return table


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Return (vocab token -> id, merges as "a b" strings) exactly as CLIP builds them."""
    text = gzip.open(BPE_FILE).read().decode("utf-8")
    merges = text.split("\n")[1 : N_MERGES + 1]
    chars = list(byte_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    tokens += ["".join(m.split(" ")) for m in merges]
    tokens += [BOS, EOS]
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary has {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: str | Path, *, pad_token: str = EOS,
                               model_max_length: int = 77) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json for a CLIPTokenizer folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")
    cfg = {"tokenizer_class": "CLIPTokenizer", "bos_token": BOS, "eos_token": EOS,
           "unk_token": EOS, "pad_token": pad_token, "model_max_length": model_max_length,
           "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return folder


def clip_tokenizer(pad_token: str = EOS, model_max_length: int = 77):
    """A ``transformers.CLIPTokenizer`` for SD 1.x (pad ``<|endoftext|>``) or SD 2.x (pad ``!``)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, unk_token=EOS, bos_token=BOS,
                         eos_token=EOS, pad_token=pad_token, model_max_length=model_max_length)
