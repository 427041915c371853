"""Generation settings are declared once (sdlab.config.setting): the CLI options and the HTTP
request models are derived from GenerationConfig's (and EditConfig's) fields."""

import argparse
import re
from dataclasses import MISSING, dataclass
from typing import Optional

import pytest

from sdlab.attention.edit import EditConfig
from sdlab.cli.main import main
from sdlab.cli.options import add_config_arguments
from sdlab.config import SAME, GenerationConfig, check_settings, setting, settings_of
from sdlab.errors import ConfigError
from sdlab.server import schemas


def option_help(capsys, command: str) -> dict[str, str]:
    """{option string: its help, whitespace collapsed} of `sdlab COMMAND --help`."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out, entries = capsys.readouterr().out, {}
    for block in re.split(r"\n(?=  -)", out.split("options:", 1)[1]):
        flags = re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", block.split("  ", 2)[1] if "  " in block else block)
        text = " ".join(block.split())
        for flag in flags:
            entries.setdefault(flag, text)
    return entries


def shown_default(default, s) -> str:
    cli = default if s.request_default is SAME else s.request_default
    return f"(default: {s.default_text})" if cli is None else f"(default {cli})"


def test_every_generation_setting_is_an_option_with_its_declared_default(capsys):
    helps = {**option_help(capsys, "img2img"), **option_help(capsys, "generate")}
    declared = {n: v for n, v in settings_of(GenerationConfig).items() if v[2].option(n)}
    assert set(declared) == set(GenerationConfig.field_names()) - {"prompt"}     # the prompt is positional
    for name, (default, _, s) in declared.items():
        text = helps[s.option(name)]
        assert s.help.split(",")[0] in text, name
        if default != "":
            assert shown_default(default, s) in text, (name, text)
    assert "-n" in helps and helps["-n"] == helps["--negative-prompt"]


def test_edit_options_show_the_edit_config_defaults(capsys):
    helps = option_help(capsys, "edit")
    for name in ("cross_replace", "self_replace", "blend_threshold", "mode"):
        assert f"(default {getattr(EditConfig(), name)})" in helps["--" + name.replace("_", "-")]
    assert "(default 0)" in helps["--seed"]          # an edit's seed is 0 unless given, not random


@pytest.mark.parametrize("model", [schemas.GenerateRequest, schemas.Img2ImgRequest, schemas.AttendRequest])
def test_http_defaults_and_bounds_are_the_declared_ones(model):
    declared = settings_of(GenerationConfig)
    fields = model.model_fields
    assert {"steps", "cfg_scale", "sampler", "seed", "width", "height", "negative_prompt", "prompt"} <= set(fields)
    for name, info in fields.items():
        if name not in declared:
            continue
        default, _, s = declared[name]
        http_default = default if s.request_default is SAME else s.request_default
        if default is MISSING:
            assert info.is_required(), name
        else:
            assert info.default == http_default, name
        bounds = {type(m).__name__: m for m in info.metadata}
        if s.lo is not None:
            assert bounds["Ge"].ge == s.lo and bounds["Le"].le == (s.http_hi if s.http_hi is not None else s.hi), name


def test_http_bounds_are_the_servers_where_stricter():
    assert (schemas.MAX_STEPS, schemas.MAX_SIDE, schemas.MAX_BATCH_SIZE, schemas.MAX_BATCH_COUNT) == (150, 2048, 8, 4)
    body = schemas.GenerateRequest(prompt="x")
    assert (body.steps, body.cfg_scale, body.sampler, body.seed) == (25, None, "Euler a", None)   # None: the model's
    edit = schemas.EditRequest(source="x")
    assert (edit.mode, edit.cross_replace, edit.self_replace, edit.blend_threshold) == \
        (EditConfig.mode, EditConfig.cross_replace, EditConfig.self_replace, EditConfig.blend_threshold)
    assert schemas.Img2ImgRequest(prompt="x").strength == GenerationConfig("x").strength


@dataclass(frozen=True)
class Toy:
    """A made-up declaration: what a new setting gets from one line."""

    size: Optional[int] = setting(None, "how big", lo=8, hi=64, multiple_of=8, default_text="native", http_hi=32)
    ratio: float = setting(0.5, "a fraction", lo=0.0, hi=1.0, aliases=("-r",))
    kind: str = setting("a", "which one", choices=lambda: ["a", "b"], flag="--type")
    extra: int = 3                         # not declared: no option, no field

    def __post_init__(self):
        check_settings(self)


def test_one_declaration_gives_checks_options_and_http_fields():
    with pytest.raises(ConfigError, match="size must be between 8 and 64, got 128"):
        Toy(size=128)
    with pytest.raises(ConfigError, match="size must be a multiple of 8, got 12"):
        Toy(size=12)
    with pytest.raises(ConfigError, match="ratio must be a number, got 'x'"):
        Toy(ratio="x")
    p = argparse.ArgumentParser()
    add_config_arguments(p, Toy, ["size", "ratio", "kind"], ratio=dict(help="share"))
    args = p.parse_args(["-r", "0.25", "--type", "b"])
    assert (args.size, args.ratio, args.kind) == (None, 0.25, "b")
    texts = {a.dest: a.help for a in p._actions}
    assert texts["size"] == "how big (default: native)" and texts["ratio"] == "share (default 0.5)"
    assert texts["kind"] == "which one, one of: a, b (default a)"
    model = schemas.declared(schemas._Request, Toy, "size", "ratio", "kind")
    assert model().model_dump() == {"size": None, "ratio": 0.5, "kind": "a"}
    from pydantic import ValidationError

    for bad in ({"size": 40}, {"size": 12}, {"ratio": 2}, {"kind": "c"}, {"extra": 1}):
        with pytest.raises(ValidationError):
            model(**bad)
