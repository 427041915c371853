"""Token bookkeeping for prompt-to-prompt (Hertz et al. 2022): where a word's tokens are, and how
the target prompt's tokens map onto the source's.

A mapping is (mapper, alphas) over the K text positions of the target: the edited cross-attention
map of target token j is  alphas[j] * M_source[..., mapper[j]] + (1 - alphas[j]) * M_target[..., j].

- word swap (`replace_mapping`): the prompts have the same token count; the identity, alphas 1,
  so the target takes the source's maps for every token.
- refinement (`refine_mapping`): tokens aligned with difflib.SequenceMatcher (the paper aligns
  with a global alignment); aligned tokens take the source map, added tokens keep their own.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..text.tokens import inspect_tokens


@dataclass(frozen=True)
class PromptTokens:
    """One prompt as the pipeline encodes it: the 77 ids of its single chunk, and its words
    (text, token positions), found from the BPE word ends."""

    prompt: str
    ids: tuple[int, ...]
    words: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def length(self) -> int:
        """Number of prompt tokens (without BOS, EOS and padding)."""
        return sum(len(p) for _, p in self.words)

    @property
    def eos(self) -> int:
        return self.length + 1

    def positions(self, word: str) -> list[int]:
        """Token positions of every occurrence of `word` (case-insensitive), or ConfigError."""
        key = word.strip().lower()
        found = [p for text, pos in self.words if text.lower() == key for p in pos]
        if not found:
            listed = ", ".join(text for text, _ in self.words) or "(none)"
            raise ConfigError(f"word {word!r} is not in the prompt {self.prompt!r}; its words are: {listed}")
        return found


def prompt_tokens(tokenizer, prompt: str) -> PromptTokens:
    """Tokenize `prompt` (A1111 syntax) into one 77-token chunk, or ConfigError if it needs more."""
    rows = inspect_tokens(tokenizer, prompt)
    if any(r["chunk"] for r in rows):
        raise ConfigError(f"prompt-to-prompt needs prompts of at most {tokenizer.model_max_length - 2} tokens "
                          f"(one chunk); {prompt!r} is longer")
    words, text, pos = [], "", []
    for r in rows:
        if r["bos"] or r["eos"] or r["padding"]:
            continue
        text, pos = text + r["token"], pos + [r["position"]]
        if r["word_end"]:
            words.append((text, tuple(pos)))
            text, pos = "", []
    if pos:
        words.append((text, tuple(pos)))
    return PromptTokens(prompt, tuple(r["id"] for r in rows), tuple(words))


def _token_list(p: PromptTokens) -> list[str]:
    return [f"{text}:{i}" if len(pos) > 1 else text for text, pos in p.words for i in range(len(pos))]


def replace_mapping(source: PromptTokens, target: PromptTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Word swap: identity mapping, all alphas 1; the prompts must have equal token counts."""
    if source.length != target.length:
        raise ConfigError(
            f"replace needs prompts with the same number of tokens: source {source.prompt!r} has {source.length} "
            f"({' '.join(_token_list(source))}), target {target.prompt!r} has {target.length} "
            f"({' '.join(_token_list(target))}); use mode 'refine' to add words")
    k = len(target.ids)
    return torch.arange(k), torch.ones(k)


def refine_mapping(source: PromptTokens, target: PromptTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Refinement: target tokens that SequenceMatcher aligns with source tokens (BOS to EOS) map to
    them (alpha 1); added or changed tokens keep their own maps (alpha 0); padding is shifted."""
    k = len(target.ids)
    src, tgt = list(source.ids[: source.eos + 1]), list(target.ids[: target.eos + 1])
    mapper, alphas = torch.arange(k), torch.zeros(k)
    matcher = difflib.SequenceMatcher(None, src, tgt, autojunk=False)
    for block in matcher.get_matching_blocks():
        for i in range(block.size):
            mapper[block.b + i], alphas[block.b + i] = block.a + i, 1.0
    pad = torch.arange(target.eos + 1, k)
    mapper[pad] = (pad - target.eos + source.eos).clamp(max=len(source.ids) - 1)
    alphas[pad] = 1.0
    return mapper, alphas
