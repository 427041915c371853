"""Token inspection: what the text encoder sees for a prompt, and its embedding tables.

`inspect_tokens` lists every position of the token sequence (id, readable text, weight, and
whether it is BOS, EOS, padding, or cut off by the 77-token limit). `token_embeddings` and
`position_embeddings` read the CLIP text model's two input tables (Radford et al. 2021): the
encoder's input at position i is token_embedding[id_i] + position_embedding[i].
"""

from __future__ import annotations

import functools

import torch

from ..errors import ConfigError
from .chunks import fragment_tokens, max_length_of, prompt_chunks
from .parse import parse_prompt_attention

WORD_END = "</w>"


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from ..models.tokenizer import byte_to_unicode

    return {c: b for b, c in byte_to_unicode().items()}


def token_text(tokenizer, token_id: int) -> tuple[str, bool]:
    """(readable text, ends a word) of one token: BPE symbols turned back into characters,
    '</w>' removed; a piece of a multi-byte character shows as '<0xNN>' bytes."""
    symbol = tokenizer.convert_ids_to_tokens(int(token_id))
    if symbol is None:
        return f"<unk:{token_id}>", False
    if int(token_id) in tokenizer.all_special_ids:
        return symbol, True
    word_end = symbol.endswith(WORD_END)
    if word_end:
        symbol = symbol[: -len(WORD_END)]
    table = _byte_decoder()
    if any(c not in table for c in symbol):
        return symbol, word_end
    raw = bytes(table[c] for c in symbol)
    try:
        return raw.decode("utf-8"), word_end
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in raw), word_end


def _row(tokenizer, position, chunk, token_id, weight, **flags) -> dict:
    text, word_end = token_text(tokenizer, token_id)
    row = {"position": position, "chunk": chunk, "id": int(token_id), "token": text,
           "word_end": word_end, "weight": float(weight)}
    row.update({k: bool(flags.get(k, False)) for k in ("bos", "eos", "padding", "truncated")})
    return row


def _chunked(tokenizer, prompt: str) -> list[dict]:
    ids, weights = prompt_chunks(tokenizer, prompt)
    rows = []
    for c, (chunk_ids, chunk_w) in enumerate(zip(ids.tolist(), weights.tolist())):
        n = len(chunk_ids)
        eos_at = chunk_ids.index(tokenizer.eos_token_id, 1)
        for i, (t, w) in enumerate(zip(chunk_ids, chunk_w)):
            rows.append(_row(tokenizer, c * n + i, c, t, w, bos=i == 0, eos=i == eos_at, padding=i > eos_at))
    return rows


def _single_window(tokenizer, prompt: str, literal: bool) -> list[dict]:
    n = max_length_of(tokenizer)
    if literal:
        tokens = [(t, 1.0) for t in tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids]
    else:
        pieces = fragment_tokens(tokenizer, parse_prompt_attention(prompt))
        tokens = [t for piece in pieces if piece is not None for t in piece]
    kept, cut = tokens[: n - 2], tokens[n - 2:]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [_row(tokenizer, 0, 0, tokenizer.bos_token_id, 1.0, bos=True)]
    rows += [_row(tokenizer, i + 1, 0, t, w) for i, (t, w) in enumerate(kept)]
    rows.append(_row(tokenizer, len(kept) + 1, 0, tokenizer.eos_token_id, 1.0, eos=True))
    rows += [_row(tokenizer, i, 0, pad, 1.0, padding=True) for i in range(len(kept) + 2, n)]
    rows += [_row(tokenizer, None, None, t, w, truncated=True) for t, w in cut]
    return rows


def inspect_tokens(tokenizer, prompt: str, *, chunks: bool = True, literal: bool = False) -> list[dict]:
    """One dict per token position: position, chunk, id, token, word_end, weight, and the flags
    bos, eos, padding, truncated.

    chunks=True: the A1111 long-prompt layout (sdlab.text.chunks), positions 0 .. 77*n-1.
    chunks=False: one 77-token window; tokens past it are listed with truncated=True and
    position/chunk None (what a plain tokenizer call with truncation drops).
    literal=True: no prompt syntax, brackets, BREAK and <lora:...> tags are plain text (implies
    one window), the tokenization sdlab's plain `Pipeline.tokenize` uses.
    """
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}")
    if not literal:
        from .extra_networks import strip_lora_tags

        prompt = strip_lora_tags(prompt)   # <lora:...> tags are not encoded
    if chunks and not literal:
        return _chunked(tokenizer, prompt)
    return _single_window(tokenizer, prompt, literal)


def text_embeddings_module(text_encoder):
    """The CLIPTextEmbeddings module of a CLIPTextModel (transformers 5 keeps it at
    `model.embeddings`; older versions and CLIPTextModelWithProjection at `model.text_model.embeddings`)."""
    for owner in (text_encoder, getattr(text_encoder, "text_model", None)):
        emb = getattr(owner, "embeddings", None)
        if emb is not None and hasattr(emb, "token_embedding") and hasattr(emb, "position_embedding"):
            return emb
    raise ConfigError(f"{type(text_encoder).__name__} has no CLIP token/position embeddings")


def token_embeddings(text_encoder, ids) -> torch.Tensor:
    """Rows of the token embedding table for `ids` (any shape): (*ids.shape, dim)."""
    emb = text_embeddings_module(text_encoder).token_embedding
    ids = torch.as_tensor(ids, dtype=torch.long, device=emb.weight.device)
    if ids.numel() and (ids.min() < 0 or ids.max() >= emb.num_embeddings):
        raise ConfigError(f"token ids must be in [0, {emb.num_embeddings - 1}]")
    return emb(ids)


def position_embeddings(text_encoder) -> torch.Tensor:
    """The position embedding table (max_positions, dim), row i added at token position i
    (a detached view of the weights)."""
    return text_embeddings_module(text_encoder).position_embedding.weight.detach()


def describe_tokens(rows: list[dict]) -> dict:
    """Counts for a token listing: prompt tokens, chunks, truncated tokens."""
    prompt_rows = [r for r in rows if not (r["bos"] or r["eos"] or r["padding"])]
    chunks = {r["chunk"] for r in rows if r["chunk"] is not None}
    return {"tokens": len(prompt_rows), "chunks": len(chunks),
            "truncated": sum(r["truncated"] for r in rows)}


__all__ = ["inspect_tokens", "token_text", "token_embeddings", "position_embeddings",
           "text_embeddings_module", "describe_tokens"]
