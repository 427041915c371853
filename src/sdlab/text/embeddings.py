"""Textual-inversion embedding files: read, write and load into a model (Gal et al. 2022).

Layouts read:
- diffusers `learned_embeds.safetensors` / `.bin`: {token: (dim,) or (N, dim)};
- AUTOMATIC1111 `.pt`: {"string_to_param": {"*": (N, dim)}, "name": ..., "step": ...}
  (read with torch.load(weights_only=True); anything else pickled is refused);
- AUTOMATIC1111 / kohya `.safetensors`: {"emb_params": (N, dim)}.
A1111 names every embedding after its file (its `load_from_file` ignores a stored name), so
these files give the token FILE-NAME, and sdlab writes its A1111 files so (`save_a1111`).

A token with N vectors becomes N tokens `tok tok_1 ... tok_{N-1}`; `expand_prompt` rewrites
`tok` in a prompt into all of them (as diffusers' `maybe_convert_prompt` does). A name the
vocabulary has already (a word or a BPE piece, as `tri`) is added as `<name>`, and `name` as a
whole word in a prompt means it, as in A1111, where the file name triggers the embedding.
"""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import ConfigError, ModelLoadError
from ..io.atomic import atomic_save
from ..io.tensor_files import read_safetensors


def token_names(token: str, n: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def _check_dim(vectors: torch.Tensor, weight: torch.Tensor) -> None:
    if vectors.shape[1] != weight.shape[1]:
        raise ConfigError(f"embedding has dimension {vectors.shape[1]}, the text encoder needs {weight.shape[1]}")


def add_tokens(tokenizer, text_encoder, tokens: list[str], vectors: torch.Tensor) -> list[int]:
    """Add `tokens` to the tokenizer, grow the embedding matrix, set their rows; their ids."""
    if vectors.ndim != 2 or vectors.shape[0] != len(tokens):
        raise ConfigError(f"need one vector per token: {len(tokens)} tokens, vectors {tuple(vectors.shape)}")
    _check_dim(vectors, text_encoder.get_input_embeddings().weight)
    vocab = tokenizer.get_vocab()
    taken = [t for t in tokens if t in vocab or f"{t}</w>" in vocab]
    if taken:
        raise ConfigError(f"token {taken[0]!r} already exists in the tokenizer; choose another placeholder")
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        weight = text_encoder.get_input_embeddings().weight
        weight[ids] = vectors.to(weight.device, weight.dtype)
    return ids


def vectors_added(token: str, added: dict) -> int:
    """How many vectors `token` has in the added vocabulary: `tok`, `tok_1`, ... (token_names)."""
    n = 1
    while f"{token}_{n}" in added:
        n += 1
    return n


def set_token_vectors(tokenizer, text_encoder, tokens: list[str], vectors: torch.Tensor) -> None:
    """New vectors for tokens an embedding added before; the count must match what was added."""
    added, weight = tokenizer.get_added_vocab(), text_encoder.get_input_embeddings().weight
    had = vectors_added(tokens[0], added)
    if had != len(tokens):
        raise ConfigError(f"token {tokens[0]!r} was added with {had} vector(s); this embedding has {len(tokens)}")
    _check_dim(vectors, weight)
    with torch.no_grad():
        weight[[added[t] for t in tokens]] = vectors.to(weight.device, weight.dtype)


# tokenizer -> {trigger word: the token it was added as}, for names the vocabulary had already
_TRIGGERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prompt_token(tokenizer, name: str) -> str:
    """The token the embedding `name` is added as: `name`, or `<name>` when the vocabulary has
    `name` already as a word or BPE piece (its row must not change)."""
    vocab, added = tokenizer.get_vocab(), tokenizer.get_added_vocab()
    if name in added or not (name in vocab or f"{name}</w>" in vocab):
        return name
    return f"<{name}>"


def _whole_word(word: str) -> re.Pattern:
    """`word` not inside another word or a `<...>` token (letters end a CLIP word; digits do not)."""
    return re.compile(rf"(?<![^\W\d_])(?<!<){re.escape(word)}(?![^\W\d_])(?!>)", re.IGNORECASE)


def expand_prompt(prompt: str, tokenizer) -> str:
    """Replace trigger words by the token they were added as (prompt_token), then each
    multi-vector token `tok` (one with `tok_1` in the vocab) by `tok tok_1 ...`."""
    for word, token in _TRIGGERS.get(tokenizer, {}).items():
        prompt = _whole_word(word).sub(token + " ", prompt)     # the space keeps a following digit apart
    added = getattr(tokenizer, "get_added_vocab", dict)()
    if not added:
        return prompt
    for token in sorted({t for t in added if f"{t}_1" in added}, key=len, reverse=True):
        pattern = re.compile(re.escape(token) + r"(?!_\d)")
        prompt = pattern.sub(" ".join(token_names(token, vectors_added(token, added))), prompt)
    return prompt


def read_embedding(path: str | Path) -> dict[str, torch.Tensor]:
    """{token: (N, dim)} from a file of any supported layout."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"embedding file '{path}' does not exist")
    if path.suffix == ".safetensors":
        data, meta = read_safetensors(path, "embedding file")
        if "emb_params" in data:
            return {path.stem: _as_2d(data["emb_params"], path)}
        _refuse_non_embedding(path, data)
        return {k: _as_2d(v, path) for k, v in data.items()}
    if path.suffix in (".pt", ".bin", ".ckpt"):
        from ..models.checkpoint import load_pickled

        data = load_pickled(path)           # tensors and plain containers only, else refused
        if isinstance(data, dict) and "string_to_param" in data:
            params = data["string_to_param"]
            if not isinstance(params, dict) or len(params) != 1:
                raise ModelLoadError(f"'{path}': string_to_param must hold exactly one tensor")
            return {path.stem: _as_2d(next(iter(params.values())), path)}
        if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
            _refuse_non_embedding(path, data)
            return {k: _as_2d(v, path) for k, v in data.items()}
    raise ModelLoadError(f"'{path}' is not a textual-inversion embedding (diffusers learned_embeds, "
                         "A1111 string_to_param .pt or emb_params .safetensors)")


MAX_TOKENS_PER_FILE = 20   # more tensors than this: model weights, not embeddings


def holds_model_weights(tensors) -> bool:
    """Whether a file's tensors look like model weights rather than a few token vectors."""
    return len(tensors) > MAX_TOKENS_PER_FILE


def _refuse_non_embedding(path: Path, tensors: dict) -> None:
    from ..models.file_kinds import lora_like_key, module_weight_key, unrecognised_file
    from ..models.lora import looks_like_lora

    if looks_like_lora(tensors):
        raise ModelLoadError(f"'{path}' is a LoRA file, not a textual-inversion embedding "
                             "(sdlab generate --lora, sdlab.models.lora.apply_lora)")
    if key := lora_like_key(tensors):
        raise unrecognised_file(path, key)
    if holds_model_weights(tensors):
        raise ModelLoadError(f"'{path}' holds model weights ({len(tensors)} tensors), not a textual-inversion "
                             "embedding; models load from a diffusers folder or a .safetensors/.ckpt checkpoint")
    if key := module_weight_key(tensors):
        raise unrecognised_file(path, key)


def _as_2d(t, path) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.ndim not in (1, 2):
        raise ModelLoadError(f"'{path}': embedding must be a (dim,) or (N, dim) tensor")
    return (t[None] if t.ndim == 1 else t).float()


def load_embedding(pipe, path: str | Path, token: str | None = None, replace: bool = False) -> list[str]:
    """Add the embedding(s) of `path` to an sdlab Pipeline; returns the prompt tokens.
    `token` renames a single-embedding file (e.g. A1111 names it after the file); `replace`
    overwrites the vectors of a token an earlier file added (same number of vectors)."""
    found = read_embedding(path)
    if token is not None:
        if len(found) != 1:
            raise ConfigError(f"'{path}' holds {len(found)} embeddings; token= needs exactly one")
        found = {token: next(iter(found.values()))}
    from ..models.hashing import short_hash

    digest, tokenizer = short_hash(path), pipe.c.tokenizer
    for name, vectors in found.items():
        token = prompt_token(tokenizer, name)
        names = token_names(token, len(vectors))
        if replace and token in tokenizer.get_added_vocab():
            set_token_vectors(tokenizer, pipe.c.text_encoder, names, vectors)
        else:
            add_tokens(tokenizer, pipe.c.text_encoder, names, vectors)
        if token != name:
            _TRIGGERS.setdefault(tokenizer, {})[name] = token
        records = getattr(pipe, "embeddings", None)
        if records is not None:
            records[:] = [r for r in records if r["name"] != name]
            records.append({"name": name, "hash": digest, "vectors": len(vectors)})
    return list(found)


def save_diffusers(path: Path, embeds: dict[str, torch.Tensor]) -> Path:
    """{token: (N, dim)} as diffusers' learned_embeds.safetensors."""
    tensors = {t: v.detach().float().cpu().contiguous() for t, v in embeds.items()}
    return atomic_save(path, lambda tmp: save_file(tensors, str(tmp)))


def save_a1111(path: Path, name: str, vectors: torch.Tensor, step: int = 0) -> Path:
    """One (N, dim) embedding as A1111 and kohya read a .safetensors embedding: the single
    tensor `emb_params` (A1111 reads any one-tensor file; kohya and ComfyUI look for this key),
    its name and step in the metadata. A1111's trigger word is the file name, so `name` should
    be the file's stem (what sdlab's own files use)."""
    tensors = {"emb_params": vectors.detach().float().cpu().contiguous()}
    meta = {"name": name, "step": str(step), "sd_checkpoint_name": ""}
    return atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
