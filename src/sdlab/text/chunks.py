"""Weighted, chunked prompt encoding for prompts past the CLIP token limit (AUTOMATIC1111's method).

A prompt is parsed into (text, weight) fragments (sdlab.text.parse), each fragment tokenized on
its own without BOS/EOS, and the tokens cut into chunks of `model_max_length - 2` (75) tokens.
A chunk that fills up is cut after its last comma when that comma lies within the final
`comma_backtrack` (20) tokens, so phrases stay whole; BREAK closes the current chunk. Each chunk
becomes `BOS tokens EOS pad...` of length model_max_length (77), the same layout the tokenizer
gives a short prompt, with weight 1.0 on BOS, EOS and padding.

Each chunk goes through the text encoder on its own; its last hidden states are multiplied by
the token weights, then rescaled so that the chunk's overall mean is what it was before the
weighting ("restore the original mean"). The chunks are concatenated along the token axis:
(1, 77 * n_chunks, dim). The UNet's cross-attention takes any number of tokens, so a longer
prompt simply gives more keys; cond and uncond are padded to the same length with chunks of
the empty prompt (pad_to_same_length) so that they batch together.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from .parse import is_break, parse_prompt_attention

COMMA_BACKTRACK = 20

Token = tuple[int, float]


def _check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}")
    return prompt


def max_length_of(tokenizer) -> int:
    """The tokenizer's model_max_length (77 for CLIP), checked to be a usable chunk size."""
    n = getattr(tokenizer, "model_max_length", None)
    if not isinstance(n, int) or not 3 <= n <= 4096:
        raise ConfigError(f"tokenizer.model_max_length must be an integer in [3, 4096], got {n!r}")
    return n


def comma_id(tokenizer) -> int | None:
    """The id of the single token a lone ',' becomes, or None when it is not one token."""
    ids = tokenizer(",", add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def fragment_tokens(tokenizer, fragments: Sequence[tuple[str, float]]) -> list[list[Token] | None]:
    """Tokenize each fragment without BOS/EOS: a list of (id, weight) per fragment, None for BREAK."""
    texts = [text for text, _ in fragments]
    ids = tokenizer(texts, add_special_tokens=False, verbose=False).input_ids if texts else []
    return [None if is_break(f) else [(i, f[1]) for i in row] for f, row in zip(fragments, ids)]


def split_chunks(pieces: Sequence[list[Token] | None], chunk_length: int, comma: int | None = None,
                 comma_backtrack: int = COMMA_BACKTRACK) -> list[list[Token]]:
    """Cut the token stream into chunks of at most `chunk_length` (A1111's rule, see module doc).

    `pieces` is the output of fragment_tokens (None = BREAK). Always at least one chunk.
    """
    chunks: list[list[Token]] = []
    current: list[Token] = []
    last_comma = -1
    for piece in pieces:
        if piece is None:  # BREAK: close the current chunk, even an empty one
            chunks.append(current)
            current, last_comma = [], -1
            continue
        for token in piece:
            if len(current) == chunk_length:
                keep = len(current)
                if (token[0] != comma and last_comma >= 0 and comma_backtrack > 0
                        and chunk_length - last_comma <= comma_backtrack):
                    keep = last_comma + 1
                chunks.append(current[:keep])
                current, last_comma = current[keep:], -1
            if comma is not None and token[0] == comma:
                last_comma = len(current)
            current.append(token)
    if current or not chunks:
        chunks.append(current)
    return chunks


def wrap_chunk(chunk: Sequence[Token], tokenizer, max_length: int) -> tuple[list[int], list[float]]:
    """`BOS tokens EOS pad...` of length max_length, weights 1.0 on everything but the tokens."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_pad = max_length - 2 - len(chunk)
    ids = [tokenizer.bos_token_id] + [t for t, _ in chunk] + [tokenizer.eos_token_id] + [pad] * n_pad
    weights = [1.0] + [float(w) for _, w in chunk] + [1.0] * (n_pad + 1)
    return ids, weights


def prompt_chunks(tokenizer, prompt: str, *, comma_backtrack: int = COMMA_BACKTRACK
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (n_chunks, 77) int64 and weights (n_chunks, 77) float32 for an A1111-syntax prompt."""
    _check_prompt(prompt)
    if not isinstance(comma_backtrack, int) or comma_backtrack < 0:
        raise ConfigError(f"comma_backtrack must be an integer >= 0, got {comma_backtrack!r}")
    max_length = max_length_of(tokenizer)
    pieces = fragment_tokens(tokenizer, parse_prompt_attention(prompt))
    chunks = split_chunks(pieces, max_length - 2, comma_id(tokenizer), comma_backtrack)
    rows = [wrap_chunk(c, tokenizer, max_length) for c in chunks]
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
    weights = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    return ids, weights


def encode_chunks(text_encoder, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """Last hidden states (n_chunks, 77, dim) of a CLIP text encoder for token chunks; with
    `clip_skip` N > 1 (A1111's CLIP skip) the output of the N-th layer from the end, through the
    encoder's final layer norm."""
    device = next(text_encoder.parameters()).device
    if clip_skip == 1:
        return text_encoder(ids.to(device)).last_hidden_state
    layers = text_encoder.config.num_hidden_layers
    if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= layers:
        raise ConfigError(f"clip_skip must be an integer from 1 to {layers} (the text encoder's layers), "
                          f"got {clip_skip!r}")
    hidden = text_encoder(ids.to(device), output_hidden_states=True).hidden_states[-clip_skip]
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)   # transformers 4 or 5


def apply_weights(hidden: torch.Tensor, weights: torch.Tensor, *, restore_mean: bool = True) -> torch.Tensor:
    """Multiply hidden states (n, tokens, dim) by per-token weights (n, tokens); with
    `restore_mean`, rescale each chunk so its mean over tokens and channels is unchanged."""
    if bool((weights == 1).all()):
        return hidden
    w = weights.to(hidden.device, torch.float32)[..., None]
    weighted = hidden.float() * w
    if restore_mean:
        before = hidden.float().mean(dim=(1, 2), keepdim=True)
        after = weighted.mean(dim=(1, 2), keepdim=True)
        weighted = weighted * torch.where(after == 0, 1.0, before / after)
    return weighted.to(hidden.dtype)


def encode_weighted(text_encoder, tokenizer, prompt: str, *, restore_mean: bool = True,
                    comma_backtrack: int = COMMA_BACKTRACK, clip_skip: int = 1) -> torch.Tensor:
    """Encode an A1111-syntax prompt of any length: (1, 77 * n_chunks, dim), chunks in order."""
    ids, weights = prompt_chunks(tokenizer, prompt, comma_backtrack=comma_backtrack)
    hidden = apply_weights(encode_chunks(text_encoder, ids, clip_skip), weights, restore_mean=restore_mean)
    return hidden.reshape(1, -1, hidden.shape[-1])


def pad_tokens(embeddings: torch.Tensor, length: int, empty_chunk: torch.Tensor) -> torch.Tensor:
    """Append copies of `empty_chunk` (tokens, dim) or (1, tokens, dim) to (B, T, dim) up to `length`."""
    chunk = empty_chunk.reshape(-1, empty_chunk.shape[-1]).to(embeddings.device, embeddings.dtype)
    missing = length - embeddings.shape[1]
    if missing < 0 or missing % chunk.shape[0]:
        raise ConfigError(f"cannot pad {embeddings.shape[1]} tokens to {length} with chunks of "
                          f"{chunk.shape[0]} tokens")
    if missing == 0:
        return embeddings
    extra = chunk.repeat(missing // chunk.shape[0], 1)
    return torch.cat([embeddings, extra.expand(embeddings.shape[0], -1, -1)], dim=1)


def pad_to_same_length(cond: torch.Tensor, uncond: torch.Tensor, empty_chunk: Callable[[], torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the shorter of cond / uncond (B, 77 * n, dim) with empty-prompt chunks, as A1111 does.

    `empty_chunk()` returns the encoding of the empty prompt, (1, 77, dim); it is called only
    when the lengths differ.
    """
    if cond.shape[1] == uncond.shape[1]:
        return cond, uncond
    length = max(cond.shape[1], uncond.shape[1])
    empty = empty_chunk()
    return pad_tokens(cond, length, empty), pad_tokens(uncond, length, empty)


def encode_weighted_batch(text_encoder, tokenizer, prompts: Sequence[str], **kwargs) -> torch.Tensor:
    """encode_weighted for several prompts: (B, 77 * max_chunks, dim), shorter ones padded with
    chunks of the empty prompt. Identical prompts are encoded once."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ConfigError("prompts must be a non-empty list of strings")
    cache: dict[str, torch.Tensor] = {}
    for p in prompts:
        if _check_prompt(p) not in cache:
            cache[p] = encode_weighted(text_encoder, tokenizer, p, **kwargs)
    length = max(e.shape[1] for e in cache.values())
    if any(e.shape[1] != length for e in cache.values()):
        empty = cache.get("") if "" in cache else encode_weighted(text_encoder, tokenizer, "", **kwargs)
        cache = {p: pad_tokens(e, length, empty) for p, e in cache.items()}
    return torch.cat([cache[p] for p in prompts], dim=0)
