"""The training-method registry: every method declares its options, recipe, resume rule, result
use, card line and memory estimate once (a MethodSpec), and the CLI, studio, eval, card and
planner read them from there; a new method is one module plus a registry line (the docs'
worked example, run here as written)."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from sdlab.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs"
SECTION = "## Adding a training method"


def _doc_module_source() -> str:
    """The first Python block of the docs' "Adding a training method" section."""
    for doc in sorted(DOCS.rglob("*.md")):
        text = doc.read_text(encoding="utf-8")
        if SECTION in text:
            return text.split(SECTION, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    raise AssertionError(f"no '{SECTION}' section under {DOCS}")


@pytest.fixture
def bias_only(monkeypatch):
    """The docs' bias-only module, imported and registered (and taken out again)."""
    from sdlab.training.methods import registry

    module = types.ModuleType("bias_only_doc")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_doc_module_source(), "docs: bias-only", "exec"), module.__dict__)
    registry.register(module.SPEC)
    yield module
    registry.unregister(module.SPEC.name)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from sdlab.world.data import export_folder

    return export_folder(tmp_path_factory.mktemp("registry") / "data", 2, seed=3)


def test_the_docs_toy_method_trains_through_the_cli(bias_only, tiny_model_dir, data, tmp_path, capsys):
    from sdlab.cli.main import main
    from sdlab.evaluate import apply
    from sdlab.pipeline import Pipeline

    out = tmp_path / "run"
    args = ["train", "bias-only", "--model", str(tiny_model_dir), "--data", str(data), "--instance-prompt", "a sks",
            "--output-dir", str(out), "--device", "cpu", "--checkpoint-every", "1"]
    assert main(args + ["--max-steps", "2", "--attention-only"]) == 0
    recorded = json.loads((out / "training_config.json").read_text())
    assert recorded["learning_rate"] == 1e-3 and recorded["adam_weight_decay"] == 0.0      # the recipe's
    assert recorded["max_steps"] == 2 and recorded["options"] == {"attention_only": True}
    base, tuned = Pipeline.load(tiny_model_dir, device="cpu"), Pipeline.load(out / "model", device="cpu")
    changed = [n for (n, a), b in zip(base.c.unet.named_parameters(), tuned.c.unet.parameters())
               if not torch.equal(a, b)]
    assert changed and all(n.endswith(".bias") and ".attn" in n for n in changed)
    assert not any(not torch.equal(a, b) for a, b in zip(base.c.text_encoder.parameters(),
                                                         tuned.c.text_encoder.parameters()))
    card = (out / "README.md").read_text()
    assert f'sdlab generate "a sks" --model {out / "model"}' in card and "attention_only=True" in card
    from_ckpt = apply.load_checkpoint(tiny_model_dir, out / "checkpoints" / "step-00000002")   # sdlab eval's reader
    assert all(torch.equal(a, b) for a, b in zip(from_ckpt.c.unet.parameters(), tuned.c.unet.parameters()))
    capsys.readouterr()
    assert main(args + ["--max-steps", "3", "--resume", "latest"]) == 2                        # resume_keeps
    assert "other settings (attention_only True -> False)" in capsys.readouterr().err


def test_the_cli_derives_flags_and_defaults_from_the_declarations(bias_only):
    from sdlab.cli.main import build_parser
    from sdlab.cli.train import config_from_args, method_from_args
    from sdlab.training.methods import registry
    from sdlab.training.methods.base import Method

    parser = build_parser()
    for spec in registry.specs():
        args = parser.parse_args(["train", spec.name, "--data", "d", "--class-prompt", "a shape"]
                                 if spec.name == "dreambooth" else ["train", spec.name, "--data", "d"])
        method = method_from_args(args)
        config = config_from_args(args, method.options)
        assert type(method) is spec.method and isinstance(method, Method)                  # the whole protocol
        assert config.method == spec.name and config.data_dir == "d"
        defaults = spec.defaults()               # the recipe, then the shipped model's training_defaults.json
        assert {k: getattr(config, k) for k in defaults} == defaults
    assert registry.get("textual-inversion").recipe["learning_rate"] == 5e-3              # today's values
    assert registry.get("dreambooth").recipe["learning_rate"] == 1e-4
    assert registry.get("lora").recipe["learning_rate"] == 5e-4
    args = parser.parse_args(["train", "bias-only", "--data", "d", "--lr", "0.5", "--attention-only",
                              "--val-data", "v", "--random-crop", "--validation-prompt", "a", "--snr-gamma", "5"])
    config = config_from_args(args, method_from_args(args).options)
    assert (config.learning_rate, config.validation_data, config.center_crop, config.validation_prompts,
            config.snr_gamma, config.options.attention_only) == (0.5, "v", False, ("a",), 5.0, True)
    with pytest.raises(ConfigError, match="snr_gamma must be between 0.001 and 10000.0"):
        config_from_args(parser.parse_args(["train", "lora", "--data", "d", "--snr-gamma", "-1"]), None)


def test_a_spec_is_checked_and_names_are_unique(bias_only):
    from sdlab.training.config import TrainingConfig
    from sdlab.training.methods import registry

    spec = bias_only.SPEC
    with pytest.raises(ConfigError, match="registered already"):
        registry.register(spec)
    with pytest.raises(ConfigError, match="recipe entry 'learnig_rate' is not a TrainingConfig field"):
        dataclasses.replace(spec, name="x", recipe={"learnig_rate": 1.0})
    with pytest.raises(ConfigError, match="resume_keeps entry 'rank' is not a field of BiasOptions"):
        dataclasses.replace(spec, name="x", resume_keeps=("rank",))
    with pytest.raises(ConfigError, match="method must be one of textual-inversion, dreambooth, lora, finetune, "
                                          "vae-decoder, controlnet, lcm, bias-only; got 'x'"):
        TrainingConfig(method="x", data_dir="d", output_dir="o")
    assert spec.config(spec.options(), data_dir="d", output_dir="o").learning_rate == 1e-3


def test_the_studio_builds_options_from_the_request_fields():
    from sdlab.server.schemas import TrainRequest
    from sdlab.training.methods import registry

    assert TrainRequest.model_fields["method"].annotation.__args__ == ("textual-inversion", "lora")
    request = TrainRequest(method="lora", instance_prompt="a sks", rank=8, lora_targets="all")
    options = registry.get(request.method).studio_options(request.model_dump())
    assert (options.rank, options.targets) == (8, "all")
    ti = registry.get("textual-inversion").studio_options(dict(request.model_dump(), placeholder="<x>"))
    assert (ti.placeholder, ti.initializer, ti.num_vectors) == ("<x>", "shape", 1)
    assert TrainRequest(instance_prompt="x").rank == registry.get("lora").options().rank
