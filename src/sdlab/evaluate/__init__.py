"""Measurements of models and edits with the shapes-world oracle and the shipped CLIP pair."""

from __future__ import annotations

import json


def emit_report(report: dict, out=None) -> str:
    """Print an evaluation report as JSON and, with `out`, also write it there atomically."""
    text = json.dumps(report, indent=2)
    if out:
        from ..io.atomic import atomic_write_text

        atomic_write_text(out, text + "\n")
    print(text)
    return text
