"""`sdlab train controlnet` on the tiny model: a ControlNet beside the frozen UNet, checkpoints and
resume, its result loaded for sampling."""

import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdlab import GenerationConfig, Pipeline
from sdlab.cli.main import main
from sdlab.control import Control
from sdlab.errors import ConfigError
from sdlab.training.loop import train
from sdlab.training.methods import registry
from sdlab.training.methods.controlnet import ControlNetOptions, colour_caption
from sdlab.world.data import export_folder
from sdlab.world.render import render
from sdlab.world.scene import single_object_scene


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return export_folder(tmp_path_factory.mktemp("cnw") / "world", 6, seed=1)


def _run(tiny_model_dir, world, out, steps, resume=None, **options):
    spec = registry.get("controlnet")
    opts = ControlNetOptions(**options)
    config = spec.config(opts, data_dir=str(world), output_dir=str(out), model=str(tiny_model_dir), max_steps=steps,
                         batch_size=2, checkpoint_every=1)
    return train(config, spec.build(opts), resume=resume)


def _weights(out):
    return load_file(out / "controlnet" / "diffusion_pytorch_model.safetensors")


def test_two_steps_then_resume_equal_three_straight_and_the_base_unet_is_untouched(tiny_model_dir, world, tmp_path):
    before = load_file(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    _run(tiny_model_dir, world, tmp_path / "a", 3, condition="edges")
    _run(tiny_model_dir, world, tmp_path / "b", 2, condition="edges")
    _run(tiny_model_dir, world, tmp_path / "b", 3, resume="latest", condition="edges")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    zero = [k for k in a if k.startswith("controlnet_down_blocks")]
    assert zero and any(a[k].abs().max() > 0 for k in zero)        # the zero convolutions moved
    after = load_file(tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="condition"):         # a resume keeps the condition
        _run(tiny_model_dir, world, tmp_path / "b", 4, resume="latest", condition="mask")


def test_trained_controlnet_samples_and_an_untrained_one_changes_nothing(tiny_model_dir, world, tmp_path):
    result = _run(tiny_model_dir, world, tmp_path / "r", 1)
    pipe = Pipeline.load(tiny_model_dir)
    image = render(single_object_scene("square", "red", "large", "left", "blue", random.Random(0)))
    config = GenerationConfig("a red object on a blue background", steps=3, seed=1, sampler="Euler")
    plain = pipe.generate(config).images[0]
    trained = pipe.generate(config, controls=[Control(image, tmp_path / "r" / "controlnet", module="mask")])
    assert not np.array_equal(np.asarray(plain), np.asarray(trained.images[0]))
    assert "Module: mask, Model: controlnet [" in trained.infotexts[0]
    from diffusers import ControlNetModel

    fresh = ControlNetModel.from_pretrained(tmp_path / "r" / "controlnet")
    for name, p in fresh.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            torch.nn.init.zeros_(p)          # zero convolutions as from_unet makes them: no residuals
    untrained = pipe.generate(config, controls=[Control(image, fresh, module="mask")]).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(untrained))
    assert result.step == 1


def test_colour_caption_names_only_colour_and_background():
    import random

    image = render(single_object_scene("triangle", "green", "small", "top", "white", random.Random(0)))
    assert colour_caption(image) == "a green object on a white background"


def test_cli_refuses_an_unknown_condition(capsys, tiny_model_dir, world, tmp_path):
    code = main(["train", "controlnet", "--data", str(world), "--output-dir", str(tmp_path / "o"),
                 "--model", str(tiny_model_dir), "--condition", "depth"])
    err = capsys.readouterr().err
    assert code == 2 and "mask, edges, layout" in err and err.count("\n") == 1, err
