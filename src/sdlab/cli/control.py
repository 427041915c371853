"""ControlNet options of `sdlab generate` / `sdlab img2img` (sdlab.control)."""

from __future__ import annotations

import argparse

from ..control.preprocess import PREPROCESSORS


def control_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ControlNet (sdlab.control)")
    g.add_argument("--control", action="append", default=[], metavar="IMAGE[:TYPE[:SCALE]]",
                   help="a control image, made into the condition by TYPE (" + ", ".join(PREPROCESSORS) +
                        "; default none: used as is) at weight SCALE (0..2, default 1); repeat for several")
    g.add_argument("--controlnet", action="append", default=[], metavar="PATH",
                   help="the ControlNet of each --control, in order (one for all works too): a diffusers "
                        "ControlNetModel folder or a .safetensors file (diffusers or original layout)")
    g.add_argument("--control-start", action="append", type=float, default=None, metavar="FRACTION",
                   help="fraction of the steps where the control starts acting (A1111's Guidance Start; "
                        "default 0); once for all or once per --control")
    g.add_argument("--control-end", action="append", type=float, default=None, metavar="FRACTION",
                   help="fraction of the steps where it stops (Guidance End; default 1)")
    g.add_argument("--guess-mode", action="store_true",
                   help="the ControlNets see no prompt and act on the conditional half of CFG only")


def controls_from_args(args) -> list:
    """The Control units of the parsed options ([] for a command without them)."""
    from ..control.build import controls_from_specs

    return controls_from_specs(getattr(args, "control", None) or [], getattr(args, "controlnet", None) or [],
                               starts=getattr(args, "control_start", None), ends=getattr(args, "control_end", None),
                               guess_mode=getattr(args, "guess_mode", False))
