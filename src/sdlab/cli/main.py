"""`sdlab` command line: generate, img2img, info, world ... (see `sdlab --help`)."""

from __future__ import annotations

import argparse
import sys

from ..errors import SdlabError
from . import attend, convert, edit, embed, evaluate, generate, info, serve, tokens, train, world

EPILOG = """examples:
  sdlab generate "a large red circle on the left on a blue background" --seed 1 --batch-size 4
  sdlab img2img input.png "a small yellow star" --strength 0.6
  sdlab info
  sdlab tokens "a (large:1.3) red circle BREAK on a blue background"
  sdlab world read image.png
  sdlab attend "a large red circle on a blue background" --out attn
  sdlab edit "a red circle on a blue background" "a red square on a blue background" --out edit
  sdlab mix "a large red {} on a blue background" circle=0.5 square=0.5 --seed 1
  sdlab interpolate "a red circle" "a red square" --frames 8 --out sweep.gif
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdlab", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.register(sub)
    attend.register(sub)
    edit.register(sub)
    info.register(sub)
    tokens.register(sub)
    world.register(sub)
    embed.register(sub)
    serve.register(sub)
    train.register(sub)
    convert.register(sub)
    evaluate.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
