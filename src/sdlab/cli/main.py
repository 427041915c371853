"""`sdlab` command line: generate, img2img, info, world ... (see `sdlab --help`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import SdlabError

# the module of each group of commands, in `sdlab --help` order; each has HELP: {command: one line}
MODULES = ("generate", "inpaint", "grid", "batch", "attend", "edit", "info", "tokens", "world", "embed", "serve",
           "train", "convert", "merge", "evaluate")

EPILOG = """examples:
  sdlab generate "a large red circle on the left on a blue background" --seed 1 --batch-size 4
  sdlab img2img input.png "a small yellow star" --strength 0.6
  sdlab inpaint input.png mask.png "a small yellow star" --mask-blur 2
  sdlab info
  sdlab tokens "a (large:1.3) red circle BREAK on a blue background"
  sdlab world read image.png
  sdlab attend "a large red circle on a blue background" --out attn
  sdlab edit "a red circle on a blue background" "a red square on a blue background" --out edit
  sdlab mix "a large red {} on a blue background" circle=0.5 square=0.5 --seed 1
  sdlab interpolate "a red circle" "a red square" --frames 8 --out sweep.gif
"""


def _with_default(action: argparse.Action) -> str | None:
    """`action`'s help with "(default: X)" added when its default means something (not None,
    False or empty) and the help does not give the value already."""
    text, default = action.help or "", action.default
    if (text == argparse.SUPPRESS or default is None or default is False or default in (argparse.SUPPRESS, [])
            or not action.option_strings or "%(default)" in text or ("default" in text and str(default) in text)):
        return action.help
    return f"{text} (default: %(default)s)".lstrip()


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option of `parser` and of the subcommand parsers below it shows its default; the
    examples in descriptions and epilogs keep their layout."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        action.help = _with_default(action)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `sdlab` parser. `command`: only the module of that command is built in full, the others
    are one-line entries for `sdlab --help`, so that a command (and its --help) imports only what
    it needs (no torch for --help); None: every command in full."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="sdlab", description=__doc__, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"sdlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in MODULES:
        module = importlib.import_module(f".{name}", __package__)
        if command is None or command in module.HELP:
            module.register(sub)
        else:
            for cmd, text in module.HELP.items():
                sub.add_parser(cmd, help=text)
    _show_defaults(parser)
    return parser


def command_of(argv: list[str]) -> str:
    """The command `argv` runs: its first argument that is no option ("" for none: `sdlab --help`)."""
    return next((a for a in argv if not a.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(command_of(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except SdlabError as err:
        print(f"sdlab: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:      # a file the command had to read or write (disk full, permissions)
        print(f"sdlab: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
