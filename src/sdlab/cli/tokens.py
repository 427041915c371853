"""`sdlab tokens "PROMPT"`: the tokens, positions and weights the text encoder sees for a prompt.

Loads only the tokenizer of the model (fast): `<model>/tokenizer` of a diffusers folder, a
tokenizer folder itself, or the CLIP vocabulary for a single-file checkpoint.
"""

from __future__ import annotations

import json

from ..errors import ModelLoadError


# this module's commands and their lines in `sdlab --help`
HELP = {"tokens": "show how a prompt is tokenized, chunked and weighted"}


def register(sub) -> None:
    p = sub.add_parser("tokens", help=HELP["tokens"])
    p.add_argument("prompt", help='prompt in A1111 syntax, e.g. "a (red:1.3) circle BREAK blue background"')
    p.add_argument("--model", default=None, help="diffusers folder, tokenizer folder or single file "
                                                 "(default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-chunks", action="store_true",
                   help="one 77-token window; tokens past it are marked truncated")
    p.add_argument("--literal", action="store_true",
                   help="no prompt syntax: brackets, weights and BREAK are plain text (one window)")
    p.set_defaults(run=run)


def load_tokenizer(model=None):
    """The tokenizer of a model path without loading any weights."""
    from transformers import CLIPTokenizer

    from ..models.shipped import model_location

    path = model_location(model)
    if not path.exists():
        raise ModelLoadError(f"model path '{path}' does not exist")
    if path.is_file():  # single-file checkpoints carry no tokenizer: SD's CLIP vocabulary
        from ..models.tokenizer import clip_tokenizer

        return clip_tokenizer()
    folder = path / "tokenizer" if (path / "tokenizer").is_dir() else path
    if not any((folder / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise ModelLoadError(f"no tokenizer found in '{path}' (expected {path / 'tokenizer'})")
    try:
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is a bad folder
        raise ModelLoadError(f"cannot load tokenizer from '{folder}': {exc}") from exc


def _flags(row: dict) -> str:
    return " ".join(name for name in ("bos", "eos", "padding", "truncated") if row[name]).upper()


def format_table(rows: list[dict]) -> list[str]:
    """Lines of a table (position, id, token, weight, flags); runs of padding collapse to one line."""
    lines = [f"{'position':>9} {'id':>6}  {'token':<18} {'weight':>7}  flags"]
    i = 0
    while i < len(rows):
        r = rows[i]
        if r["padding"]:
            j = i
            while j + 1 < len(rows) and rows[j + 1]["padding"] and rows[j + 1]["chunk"] == r["chunk"]:
                j += 1
            pos = f"{r['position']}-{rows[j]['position']}"
            lines.append(f"{pos:>9} {r['id']:>6}  {r['token']:<18} {r['weight']:>7.4g}  PADDING x{j - i + 1}")
            i = j + 1
            continue
        pos = "-" if r["position"] is None else str(r["position"])
        lines.append(f"{pos:>9} {r['id']:>6}  {r['token']:<18} {r['weight']:>7.4g}  {_flags(r)}".rstrip())
        i += 1
    return lines


def run(args) -> int:
    from ..text.chunks import max_length_of
    from ..text.tokens import describe_tokens, inspect_tokens

    tok = load_tokenizer(args.model)
    rows = inspect_tokens(tok, args.prompt, chunks=not args.no_chunks, literal=args.literal)
    summary = describe_tokens(rows)
    summary["max_length"] = max_length_of(tok)
    if args.json:
        print(json.dumps({"prompt": args.prompt, **summary, "rows": rows}, indent=2))
        return 0
    print("\n".join(format_table(rows)))
    line = f"{summary['tokens']} prompt tokens in {summary['chunks']} chunk(s) of {summary['max_length']}"
    if summary["truncated"]:
        line += f"; {summary['truncated']} truncated (past the {summary['max_length']}-token limit)"
    print(line)
    return 0
