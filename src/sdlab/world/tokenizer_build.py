"""A CLIP-format BPE tokenizer for the shapes world (vocab.json + merges.txt).

BPE (Sennrich et al. 2016) learned with the `tokenizers` trainer on world captions, laid
out the way CLIP lays out its vocabulary: 256 byte symbols, the same with '</w>', one token
per merge, then '<|startoftext|>' and '<|endoftext|>'. Any text still tokenizes (down to
bytes); every world word is one token.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from . import spec
from .captions import caption
from .scene import SceneSampler

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
EXTRA_WORDS = ("photo", "picture", "image", "drawing", "shape", "object", "colour", "color",
               "background", "striped", "solid", "heart", "small", "large", "big", "tiny")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def corpus(n: int = 20000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sampler = SceneSampler(shapes=spec.SHAPES, fills=spec.FILLS)
    texts = [caption(sampler.sample(rng), rng) for _ in range(n)]
    return texts + [" ".join(EXTRA_WORDS)] * 50 + [" ".join(spec.COLORS)] * 50


def build_tokenizer(out_dir: str | Path, max_length: int = 77) -> CLIPTokenizer:
    """Learn the BPE on world captions and write a CLIPTokenizer folder to `out_dir`."""
    alphabet = list(bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=600 + len(alphabet) * 2, initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False, min_frequency=2)
    bpe.train_from_iterator(corpus(), trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=max_length,
                        bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    tok.save_pretrained(out)
    return CLIPTokenizer.from_pretrained(out)
