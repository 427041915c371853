"""`sdlab --help` and every `sdlab COMMAND --help` start without importing torch, diffusers or
transformers (issue 22: a fast first image); the commands' parsers built lazily are the same as
the full parser's; the torch-free declarations agree with the registries they stand for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdlab.cli.main import build_parser

HEAVY = ("torch", "diffusers", "transformers")
TRAIN = ["train", "lora"]           # built from the methods' torch-free declarations (NAME_options.py)
# runs every --help in one fresh interpreter, the train ones last, and records which heavy
# modules each one imported first
PROBE = """
import contextlib, io, json, sys
from sdlab.cli.main import main
seen, out = set(), {}
for cmd in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(cmd + ["--help"])
    new = sorted(m for m in sys.modules if m.split(".")[0] in %r and m.split(".")[0] not in seen)
    seen |= {m.split(".")[0] for m in new}
    out[" ".join(cmd)] = sorted({m.split(".")[0] for m in new})
print(json.dumps(out))
""" % (HEAVY,)


def _subparsers(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


COMMANDS = [[]] + [[name] for name in _subparsers(build_parser())]


@pytest.fixture(scope="module")
def imported() -> dict:
    cmds = [c for c in COMMANDS if c[:1] != ["train"]] + [["train"], TRAIN]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cmds)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c[:1] != ["train"]], ids=lambda c: " ".join(c) or "sdlab")
def test_help_imports_no_torch(imported, cmd):
    assert imported[" ".join(cmd)] == []


def test_train_help_imports_no_torch(imported):
    assert imported["train"] == imported["train lora"] == []


def test_train_declarations_are_the_registered_specs():
    """What `sdlab train --help` is built from (torch-free) names, in order, every registered method,
    with its spec's options, recipe and summary."""
    from sdlab.training.methods import registry

    declared = registry.declarations()
    assert [d.name for d in declared] == list(registry.names())
    for d in declared:
        spec = registry.get(d.name)
        assert (spec.options, dict(spec.recipe), spec.summary) == (d.options, dict(d.recipe), d.summary)


def test_python_m_sdlab_help_is_torch_free():
    """The real entry point, `python -m sdlab --help`, in its own interpreter (`-X importtime`)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "sdlab", "--help"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "generate" in proc.stdout
    names = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert not names & set(HEAVY)


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c], ids=lambda c: c[0])
def test_lazy_parser_of_a_command_is_the_full_one(cmd):
    """build_parser(COMMAND), as `sdlab COMMAND ...` runs, gives that command the same options and
    help as the parser of every command."""
    full, lazy = _subparsers(build_parser())[cmd[0]], _subparsers(build_parser(cmd[0]))[cmd[0]]
    assert lazy.format_help() == full.format_help()


def test_sdlab_help_lists_every_command_with_its_line():
    full, lazy = build_parser(), build_parser("")
    lines = {a.dest: a.help for a in next(a for a in full._actions if hasattr(a, "_choices_actions"))._choices_actions}
    stub = {a.dest: a.help for a in next(a for a in lazy._actions if hasattr(a, "_choices_actions"))._choices_actions}
    assert list(stub) == list(lines)
    assert {k: v for k, v in stub.items() if k != "train"} == {k: v for k, v in lines.items() if k != "train"}


def test_torch_free_names_match_the_registries():
    from sdlab.sampling import hires, names, samplers, sigmas

    assert names.sampler_names() == list(samplers.SAMPLERS)
    assert names.HIRES_UPSCALERS == tuple(hires.UPSCALERS)
    assert names.schedule_names() == sigmas.schedule_names()


def test_attention_edit_stays_the_function():
    """The package's `edit` is the prompt-to-prompt function even after its submodule was imported."""
    import sdlab.attention.edit as module_or_function  # noqa: F401
    from sdlab.attention import edit
    from sdlab.attention.edit import edit as fn

    assert edit is fn and callable(edit)
