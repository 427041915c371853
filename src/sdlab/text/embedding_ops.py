"""Token-embedding operations: replace or mix the input embedding of a word in a prompt.

The CLIP text encoder's input at position i is token_embedding[id_i] + position_embedding[i]
(Radford et al. 2021); the "Stable Diffusion deep dive" edits the token part before the
transformer runs: swap a word's vector for another word's, for a learned textual-inversion
concept (Gal et al. 2022), or for a weighted mix of several words ("half puppy, half skunk").

Here that edit is a forward hook on the text encoder's `token_embedding` module
(`torch.nn.Module.register_forward_hook`), installed only while one prompt is encoded and
removed afterwards. The hook fires only for the exact token ids of that prompt, so any other
text encoded at the same time is left alone. Every occurrence of the word is replaced.

    cond = encode_with_overrides(pipe, "a large red circle", {"circle": mix({"circle": .5, "square": .5})})
    pipe.generate(GenerationConfig("a large red circle", seed=1), cond=cond)
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence, Union

import torch

from ..errors import ConfigError
from .chunks import prompt_chunks
from .tokens import text_embeddings_module, token_text


@dataclass(frozen=True)
class Mix:
    """A weighted mix of word embeddings, normalised by the sum of the weights."""

    weights: tuple[tuple[str, float], ...]


Replacement = Union[str, int, torch.Tensor, Mix]


def mix(weights: Mapping[str, float]) -> Mix:
    """`mix({"circle": 0.5, "square": 0.5})`: sum_i w_i * e(word_i) / sum_i w_i."""
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError("mix needs a non-empty mapping of word -> weight, e.g. {'circle': 0.5, 'square': 0.5}")
    items = []
    for word, w in weights.items():
        if not isinstance(word, str) or not word.strip():
            raise ConfigError(f"mix words must be non-empty strings, got {word!r}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"mix weight of '{word}' must be a finite number, got {w!r}")
        items.append((word, float(w)))
    total = sum(w for _, w in items)
    if not total > 0:
        raise ConfigError(f"mix weights must sum to a positive number, got {' + '.join(f'{w:g}' for _, w in items)}"
                          f" = {total:g}")
    return Mix(tuple(items))


def word_ids(tokenizer, word: str | int) -> list[int]:
    """Token ids of a word (a vocabulary entry such as 'circle</w>' is taken as it is), or of a
    token id; ConfigError for an empty word, an id outside the vocabulary or an unknown token."""
    if isinstance(word, int) and not isinstance(word, bool):
        if not 0 <= word < len(tokenizer):
            raise ConfigError(f"unknown token id {word}: the vocabulary has ids 0..{len(tokenizer) - 1}")
        return [word]
    if not isinstance(word, str) or not word.strip():
        raise ConfigError(f"a word must be a non-empty string or a token id, got {word!r}")
    vocab = tokenizer.get_vocab()
    # 'circle</w>' names one entry; a plain 'circle' is tokenized as a prompt would be (in
    # CLIP's vocabulary a bare 'circle' is also the piece that starts 'circles').
    if word in vocab and (word.endswith("</w>") or word in tokenizer.all_special_tokens):
        return [vocab[word]]
    ids = tokenizer(word, add_special_tokens=False).input_ids
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids and tokenizer.unk_token not in word:
        raise ConfigError(f"unknown token: '{word}' is not in the tokenizer's vocabulary")
    return ids


def _pieces(tokenizer, ids: Sequence[int]) -> str:
    return " ".join(token_text(tokenizer, i)[0] for i in ids)


def _vectors_of(table: torch.nn.Embedding, tokenizer, word, n: int, target: str) -> torch.Tensor:
    ids = word_ids(tokenizer, word)
    if len(ids) != n:
        raise ConfigError(f"unknown token: '{word}' is {len(ids)} token(s) in this vocabulary ({_pieces(tokenizer, ids)})"
                          f" but '{target}' is {n}; a replacement needs the same number of tokens")
    return table.weight[torch.tensor(ids, device=table.weight.device)].detach()


def replacement_vectors(text_encoder, tokenizer, target: str, n: int, replacement: Replacement) -> torch.Tensor:
    """The (n, dim) input vectors that replace the n tokens of `target`."""
    table = text_embeddings_module(text_encoder).token_embedding
    dim = table.embedding_dim
    if isinstance(replacement, Mix):
        vecs = [w * _vectors_of(table, tokenizer, word, n, target).float() for word, w in replacement.weights]
        return (sum(vecs) / sum(w for _, w in replacement.weights)).to(table.weight.dtype)
    if isinstance(replacement, torch.Tensor):
        vec = replacement.detach().to(table.weight.device, table.weight.dtype)
        vec = vec[None] if vec.ndim == 1 else vec
        if vec.ndim != 2 or vec.shape != (n, dim):
            raise ConfigError(f"a replacement vector for '{target}' must have shape ({dim},) or ({n}, {dim}), "
                              f"got {tuple(replacement.shape)}")
        return vec
    if isinstance(replacement, (str, int)) and not isinstance(replacement, bool):
        return _vectors_of(table, tokenizer, replacement, n, target)
    raise ConfigError(f"a replacement must be a word, a token id, a tensor or mix(...), got {type(replacement).__name__}")


def find_word(ids: torch.Tensor, span: Sequence[int]) -> list[tuple[int, int]]:
    """(chunk, position) of every occurrence of the token sequence `span` in ids (chunks, tokens)."""
    k, hits = len(span), []
    want = torch.tensor(span, dtype=ids.dtype)
    for c, row in enumerate(ids):
        for p in range(row.numel() - k + 1):
            if torch.equal(row[p:p + k], want):
                hits.append((c, p))
    return hits


def _prompt_tokens(tokenizer, ids: torch.Tensor) -> str:
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return ", ".join(token_text(tokenizer, int(i))[0] for i in ids.flatten() if int(i) not in special)


def plan_overrides(text_encoder, tokenizer, prompt: str, overrides: Mapping[str, Replacement]
                   ) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:
    """The prompt's token ids (chunks, 77) and the edits (chunk, position, vectors (k, dim))."""
    if not isinstance(overrides, Mapping) or not overrides:
        raise ConfigError("overrides must be a non-empty mapping of word in the prompt -> replacement")
    ids, _ = prompt_chunks(tokenizer, prompt)
    edits = []
    for word, replacement in overrides.items():
        span = word_ids(tokenizer, word)
        hits = find_word(ids, span)
        if not hits:
            raise ConfigError(f"'{word}' is not in the prompt; the prompt's tokens are: {_prompt_tokens(tokenizer, ids)}")
        vectors = replacement_vectors(text_encoder, tokenizer, str(word), len(span), replacement)
        edits += [(c, p, vectors) for c, p in hits]
    return ids, edits


@contextlib.contextmanager
def token_embedding_hook(text_encoder, ids: torch.Tensor, edits: Sequence[tuple[int, int, torch.Tensor]]
                         ) -> Iterator[None]:
    """While active, a forward hook on `token_embedding` writes `edits` into its output whenever
    its input is exactly `ids`; the hook is removed on exit, also after an error."""
    module = text_embeddings_module(text_encoder).token_embedding
    expected = ids.cpu()

    def hook(_module, args, output):
        given = args[0] if args else None
        if not isinstance(given, torch.Tensor) or given.shape != expected.shape or not torch.equal(given.cpu(), expected):
            return None
        out = output.clone()
        for c, p, vectors in edits:
            out[c, p:p + vectors.shape[0]] = vectors.to(out.device, out.dtype)
        return out

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_with_overrides(pipe, prompt: str, overrides: Mapping[str, Replacement], clip_skip: int = 1) -> torch.Tensor:
    """Prompt embeddings (1, 77 * chunks, dim) with the input embeddings of words replaced:
    overrides maps a word of the prompt to a word, a token id, a vector (dim,) / (k, dim) or
    a `mix(...)`; encoded as `pipe.encode_prompt` does, with `clip_skip` (A1111's CLIP skip).
    Pass the result as `pipe.generate(config, cond=...)` with the same config.clip_skip."""
    text_encoder, tokenizer = pipe.c.text_encoder, pipe.c.tokenizer
    ids, edits = plan_overrides(text_encoder, tokenizer, prompt, overrides)
    with token_embedding_hook(text_encoder, ids, edits):
        return pipe.encode_prompt([prompt], clip_skip)


def load_concept(path) -> torch.Tensor:
    """The vectors (k, dim) of a textual-inversion file in safetensors format: the diffusers
    layout {"<token>": (dim,) or (k, dim)} or the A1111 layout {"emb_params": (k, dim)}."""
    from pathlib import Path

    from safetensors.torch import load_file

    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        raise ConfigError(f"a concept must be an existing .safetensors file, got '{path}'")
    tensors = load_file(str(p))
    if "emb_params" in tensors:
        return tensors["emb_params"]
    if len(tensors) != 1:
        raise ConfigError(f"'{path}' holds {len(tensors)} tensors ({', '.join(tensors)}); expected one concept")
    vec = next(iter(tensors.values()))
    return vec[None] if vec.ndim == 1 else vec
