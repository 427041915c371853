"""LoRA targets: the attention preset, whole transformer blocks, or every convolution too
(LoCon); the conv adapters save in both layouts and load in sdlab and plain diffusers alike."""

import pytest
import torch

from sdlab.errors import ConfigError
from sdlab.training.config import TrainingConfig
from sdlab.training.loop import train
from sdlab.training.methods.lora import LoRA, LoraOptions
from lora_util import assert_files_load_alike


def _train(tiny_model_dir, root, **options):
    from sdlab.world.data import export_folder

    data = export_folder(root / "data", 4, seed=4)
    method = LoRA(LoraOptions(rank=2, **options))
    cfg = TrainingConfig(method="lora", data_dir=str(data), output_dir=str(root / "out"), model=str(tiny_model_dir),
                         max_steps=2, learning_rate=5e-2, checkpoint_every=100, device="cpu", options=method.options)
    train(cfg, method)
    return method, root / "out"


@pytest.fixture(scope="module")
def conv_lora(tiny_model_dir, tmp_path_factory):
    return _train(tiny_model_dir, tmp_path_factory.mktemp("lora-all"), targets="all")


def test_all_targets_every_resnet_conv_and_loads_alike(conv_lora, tiny_model_dir):
    from sdlab.pipeline import Pipeline

    method, out = conv_lora
    layers = method.layers()
    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    convs = {n for n, m in pipe.c.unet.named_modules() if isinstance(m, torch.nn.Conv2d)
             and n.split(".")[-1] in ("conv1", "conv2", "conv_shortcut", "conv")}
    assert convs and {f"unet.{n}" for n in convs} <= set(layers)
    assert "unet.conv_in" not in layers and "unet.conv_out" not in layers
    conv = layers[f"unet.{sorted(convs)[0]}"]
    assert conv.down.dim() == 4 and conv.down.shape[0] == 2 and conv.up.abs().max() > 0
    assert_files_load_alike(out, tiny_model_dir)           # diffusers reads both files, convs included


def test_presets_nest_and_the_memory_estimate_counts_them(conv_lora, tiny_model_dir):
    from sdlab.training.memory import lora_numel, model_shapes
    from sdlab.training.methods.lora import TARGET_PRESETS, matching_modules, target_names

    method, _ = conv_lora
    c = model_shapes(tiny_model_dir)
    sizes = [lora_numel(matching_modules(c.unet, target_names(t, c.unet)[0]), 2)
             for t in ("attention", "transformer", "all")]
    assert sizes[0] < sizes[1] < sizes[2]
    assert set(TARGET_PRESETS["attention"][0]) < set(TARGET_PRESETS["transformer"][0]) < set(TARGET_PRESETS["all"][0])
    trained = sum(l.down.numel() + l.up.numel() for l in method.layers().values())
    assert trained == sizes[2]


def test_module_names_pick_exactly_those_layers(tiny_model_dir, tmp_path):
    method, _ = _train(tiny_model_dir, tmp_path, targets="to_k,conv2")
    suffixes = {k.split(".")[-1] for k in method.layers()}
    assert suffixes == {"to_k", "conv2"}


@pytest.mark.parametrize("targets, message", [
    ("all convs", "must be one of attention, transformer, all or comma-separated module names"),
    ("to_q,,to_v", "comma-separated module names"),
    (7, "got 7"),
])
def test_bad_targets_are_refused_at_once(targets, message):
    with pytest.raises(ConfigError, match=message):
        LoraOptions(targets=targets)


def test_a_name_that_matches_no_layer_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="'to_z' matches no Linear or Conv2d module of the UNet"):
        _train(tiny_model_dir, tmp_path, targets="to_q,to_z")


def test_cli_refuses_bad_targets(tiny_model_dir, tmp_path, capsys):
    from sdlab.cli.main import main

    rc = main(["train", "lora", "--data", str(tmp_path), "--instance-prompt", "a sks", "--targets", "all convs",
               "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "out")])
    assert rc == 2 and "LoRA targets must be one of" in capsys.readouterr().err


def test_info_describes_a_lora_file_in_either_layout(conv_lora, capsys):
    import json

    from sdlab.cli.main import main

    method, out = conv_lora
    described = []
    for name in ("lora_kohya.safetensors", "lora/pytorch_lora_weights.safetensors"):
        assert main(["info", str(out / name), "--json"]) == 0
        described.append(json.loads(capsys.readouterr().out))
    for d in described:
        unet = d["components"]["unet"]
        assert d["kind"] == "LoRA" and unet["layers"] == len(method.layers()) and unet["ranks"] == {"2": unet["layers"]}
        assert unet["targets"]["conv1"] > 0 and unet["conv"] > unet["targets"]["conv1"]
        assert unet["parameters"] == sum(l.down.numel() + l.up.numel() for l in method.layers().values())
    assert [d["format"] for d in described] == ["kohya", "diffusers"]
    assert main(["info", str(out / "lora_kohya.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "LoRA (kohya layout)" in text and "rank 2, alpha 2" in text and "conv1 x" in text
