"""AUTOMATIC1111 prompt editing `[from:to:when]` and alternation `[a|b]`: the prompt text per sampling step.

The syntax, as A1111 (>= 1.6) reads it:

- `[from:to:when]` is `from` up to step `when`, then `to`; `[to:when]` adds `to` after `when`,
  `[from::when]` removes `from` after `when`. Edits nest: `a [b:[c:d:2]:1] e`.
- `when` with a decimal point is a fraction of the steps, `int(when * steps)` (0.25 of 10 steps is
  step 2, rounded down); without one it is a step number. Either is capped at `steps`.
- `[a|b|c]` cycles through its options, one per step; an option may be empty (`[fe|]male`).
- In a hires fix's second pass (`hires_steps` given) steps count on from the first pass: an integer
  `when` is `when - steps` of the hires steps, a fraction `(when - 1) * hires_steps`, so
  `[a:b:1.5]` switches half-way through the hires pass and `[a:b:0.5]` is `b` all through it.
- Anything else, weights `(word:1.3)`, BREAK, `<lora:...>` tags and brackets that do not parse,
  is text: it is kept as written and read later (sdlab.text.parse). A prompt the grammar cannot
  read at all is used as it is, at every step.

`prompt_schedule` gives [(end_step, text), ...]: `text` is used while the sampler step (0-based)
is <= end_step, so with 10 steps `a [b:3]` is "a " for steps 0-3 and "a b" after (A1111's rule).
The schedule is taken over sampler steps: a sampler that calls the model twice in a step (Heun)
uses one text for both calls, where A1111 counts model calls.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

from ..errors import ConfigError

# Stray brackets and colons at the top level are text; inside brackets, `(..)`/`[..]`/`(..:..)`
# are weights (kept as text here), `[..:..:N]` an edit and `[..|..]` an alternation.
GRAMMAR = r"""
!start: (text | /[][():]/+)*
text: (weighted | edit | alternation | plain | WHITESPACE)*
!weighted: "(" text ")"
         | "(" text ":" text ")"
         | "[" text "]"
edit: "[" [text ":"] text ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternation: "[" text ("|" [text])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""


@functools.lru_cache(maxsize=1)
def _parser():
    import lark

    return lark.Lark(GRAMMAR)


def _when(number: str, steps: int, hires_steps: Optional[int]) -> int:
    """The step an edit switches after: a fraction with a decimal point, else a step number."""
    value = float(number)
    if "." in number:
        value = (value - (1.0 if hires_steps else 0.0)) * (hires_steps or steps)
    else:
        value -= steps if hires_steps else 0
    return min(hires_steps or steps, int(value))


def _switch_steps(tree, steps: int, hires_steps: Optional[int]) -> list[int]:
    """The steps where the text may change: each edit's `when` (>= 1), every step with an alternation."""
    total = hires_steps or steps
    out = {total}
    for node in tree.iter_subtrees():
        if node.data == "edit":
            when = _when(str(node.children[-2]), steps, hires_steps)
            if when >= 1:
                out.add(when)
        elif node.data == "alternation":
            out.update(range(1, total + 1))
    return sorted(out)


def _text_at(node, step: int, steps: int, hires_steps: Optional[int]) -> str:
    """The text of a parse (sub)tree at `step`."""
    import lark

    if node is None:
        return ""
    if isinstance(node, lark.Token):
        return str(node)
    if node.data == "edit":
        before, after, _, number, _ = node.children
        chosen = before if step <= _when(str(number), steps, hires_steps) else after
        return _text_at(chosen, step, steps, hires_steps)
    if node.data == "alternation":
        options = node.children
        return _text_at(options[(step - 1) % len(options)], step, steps, hires_steps)
    return "".join(_text_at(child, step, steps, hires_steps) for child in node.children)


def prompt_schedule(prompt: str, steps: int, hires_steps: Optional[int] = None) -> list[tuple[int, str]]:
    """[(end_step, text), ...] of an A1111 prompt over `steps` sampler steps (see the module doc);
    `hires_steps`: the schedule of a hires fix's second pass of that many steps.

    >>> prompt_schedule("a [b:c:0.5] d", 10)
    [(5, 'a b d'), (10, 'a c d')]
    """
    import lark

    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string, got {type(prompt).__name__}")
    for name, value in (("steps", steps), ("hires_steps", hires_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        tree = _parser().parse(prompt)
    except lark.exceptions.LarkError:
        return [(hires_steps or steps, prompt)]
    return [(t, _text_at(tree, t, steps, hires_steps)) for t in _switch_steps(tree, steps, hires_steps)]


def encode_schedule(encode: Callable[[str], object], prompt: str, steps: int,
                    hires_steps: Optional[int] = None) -> list[tuple[int, object]]:
    """[(end_step, encode(text)), ...] for `prompt_schedule(prompt, ...)`, each distinct text encoded once."""
    cache: dict[str, object] = {}
    out = []
    for end, text in prompt_schedule(prompt, steps, hires_steps):
        if text not in cache:
            cache[text] = encode(text)
        out.append((end, cache[text]))
    return out
