"""AUTOMATIC1111 prompt-attention syntax: `(word)`, `[word]`, `(word:1.3)`, escapes and BREAK.

The rules, as users of the AUTOMATIC1111 web UI write prompts:

- `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1;
- `(text:1.3)` multiplies it by 1.3 (an explicit weight, times the enclosing brackets' weight);
- brackets nest and their factors multiply: `((a))` is 1.21, `[(a:2)]` is 2 / 1.1;
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the literal characters;
- an unclosed `(` or `[` applies to the rest of the prompt, a stray `)` or `]` is literal text;
- a weight that is not a number, like `(a:x)`, leaves `:x` as text inside a plain `( )`;
- `BREAK` in upper case, as a word of its own, becomes the marker ("BREAK", -1.0): the
  text after it starts a new 75-token chunk (see sdlab.text.chunks).

Adjacent fragments with the same weight are merged. Differences from the web UI, on purpose:
a BREAK inside brackets stays a marker (the web UI turns it into the literal word with a
negative weight), a lone backslash stays in the text (the web UI drops it), and a weight
like `(a:1.2.3)` is read as text instead of raising an error.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

BREAK = "BREAK"
BREAK_WEIGHT = -1.0
ROUND = 1.1
SQUARE = 1 / 1.1

_PIECES = re.compile(
    r"""
      \\[()\[\]\\]                      # escaped bracket or backslash
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)  # ':1.3)' closes a round bracket with a weight
    | [()\[\]]                          # a bracket
    | [^\\()\[\]:]+                     # plain text
    | [\\:]                             # a lone backslash or colon (text)
    """,
    re.VERBOSE,
)
_BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*")


def is_break(fragment: tuple[str, float]) -> bool:
    """True for the ("BREAK", -1) marker that parse_prompt_attention emits."""
    return fragment[0] == BREAK and fragment[1] == BREAK_WEIGHT


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


class _Builder:
    """Fragments as [text, weight, is_break], with one stack of open positions per bracket."""

    def __init__(self):
        self.items: list[list] = []
        self.open: dict[str, list[int]] = {"(": [], "[": []}

    def text(self, text: str) -> None:
        for i, part in enumerate(_BREAK_SPLIT.split(text)):
            if i:
                self.items.append([BREAK, BREAK_WEIGHT, True])
            self.items.append([part, 1.0, False])

    def scale(self, start: int, factor: float) -> None:
        for item in self.items[start:]:
            if not item[2]:
                item[1] *= factor

    def close(self, bracket: str, factor: float) -> bool:
        """Close the innermost open `bracket`; False when none is open."""
        if not self.open[bracket]:
            return False
        self.scale(self.open[bracket].pop(), factor)
        return True

    def finish(self) -> list[tuple[str, float]]:
        for start in self.open["("]:  # unclosed brackets apply to the rest of the prompt
            self.scale(start, ROUND)
        for start in self.open["["]:
            self.scale(start, SQUARE)
        out: list[list] = []
        for item in self.items:
            if not item[2] and item[0] == "":
                continue
            if out and not item[2] and not out[-1][2] and out[-1][1] == item[1]:
                out[-1][0] += item[0]
            else:
                out.append(list(item))
        if not out:
            return [("", 1.0)]
        return [(text, float(weight)) for text, weight, _ in out]


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split an A1111-syntax prompt into (text, weight) fragments; BREAK gives ("BREAK", -1).

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    if not isinstance(text, str):
        raise ConfigError(f"prompt must be a string, got {type(text).__name__}")
    b = _Builder()
    for m in _PIECES.finditer(text):
        piece, weight = m.group(0), m.group("weight")
        if len(piece) == 2 and piece[0] == "\\":
            b.text(piece[1])
        elif piece in ("(", "["):
            b.open[piece].append(len(b.items))
        elif weight is not None:
            value = _number(weight)
            if value is not None and b.close("(", value):
                continue
            b.text(piece[:-1])  # not a number, or no open bracket: ':...' is text
            if not b.close("(", ROUND):
                b.text(")")
        elif piece == ")" and b.close("(", ROUND):
            pass
        elif piece == "]" and b.close("[", SQUARE):
            pass
        else:
            b.text(piece)
    return b.finish()
