"""The attention hook, step counting, stored cross-attention maps and their heatmaps."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.attention import AttentionController, AttentionStore, attention_control
from sdlab.attention.maps import attention_figure, colormap, token_heatmaps, token_labels
from sdlab.attention.processor import ControlledAttnProcessor
from sdlab.config import GenerationConfig
from sdlab.errors import ConfigError


def sd15_layout_unet(**overrides):
    """The SD 1.5 UNet config (block types, 2 layers per block, 8 heads, 768-d text) with random
    weights; narrow channels unless overridden, so it runs on a CPU in a second."""
    from diffusers import UNet2DConditionModel

    from sdlab.models.single_file import CONFIG_ROOT

    cfg = json.loads((CONFIG_ROOT / "sd15" / "unet" / "config.json").read_text())
    cfg.update({"block_out_channels": [32, 32, 64, 64], "norm_num_groups": 8, "sample_size": 8}, **overrides)
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(cfg).eval()


class Everything(AttentionController):
    """Asks for every layer's probabilities and changes nothing: exercises the explicit path."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def wants(self, layer):
        return True

    def forward(self, probs, is_cross, place_in_unet, layer):
        self.calls.append((self.step, layer.place, is_cross, tuple(probs.shape)))
        return probs


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from sdlab.pipeline import Pipeline

    return Pipeline.load(tiny_model_dir)


@pytest.fixture(scope="module")
def sd15():
    return sd15_layout_unet()


def _unet_out(unet, x, t, c):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=c).sample


@pytest.mark.parametrize("which", ["tiny", "sd15"])
def test_processor_matches_default_with_and_without_controller(which, pipe, sd15):
    unet = pipe.c.unet if which == "tiny" else sd15
    torch.manual_seed(1)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([700.0, 700.0])
    c = torch.randn(2, 77, unet.config.cross_attention_dim)
    ref = _unet_out(unet, x, t, c)
    with attention_control(unet, None):
        fast = _unet_out(unet, x, t, c)
    ctl = Everything(cfg=False)
    with attention_control(unet, ctl):
        explicit = _unet_out(unet, x, t, c)
    assert (fast - ref).abs().max() < 1e-5
    assert (explicit - ref).abs().max() < 1e-5
    n_layers = len(unet.attn_processors)
    assert len(ctl.calls) == n_layers and sum(call[2] for call in ctl.calls) == n_layers // 2
    if which == "sd15":  # 16 transformer blocks: 6 down, 1 mid, 9 up; 8 heads each
        places = [p for _, p, cross, _ in ctl.calls if cross]
        assert (places.count("down"), places.count("mid"), places.count("up")) == (6, 1, 9)
        assert all(shape[1] == 8 for *_, shape in ctl.calls)


def test_attention_control_restores_processors_and_hook(pipe):
    unet = pipe.c.unet
    before = dict(unet.attn_processors)
    ctl = Everything(cfg=False)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 77, 32)
    with pytest.raises(RuntimeError, match="boom"):
        with attention_control(unet, ctl):
            assert all(isinstance(p, ControlledAttnProcessor) for p in unet.attn_processors.values())
            _unet_out(unet, x, t, c)
            raise RuntimeError("boom")
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    calls = len(ctl.calls)
    _unet_out(unet, x, t, c)  # the hook is gone: the controller hears nothing
    assert len(ctl.calls) == calls and ctl.forward_count == 1
    with pytest.raises(ConfigError, match="AttentionController"):
        with attention_control(unet, object()):
            pass


@pytest.mark.parametrize("sampler,steps,forwards", [("Euler", 3, 3), ("Heun", 3, 5), ("DPM++ 2M", 4, 4)])
def test_controller_counts_sampling_steps(pipe, sampler, steps, forwards):
    ctl = Everything(batch_size=1)
    pipe.generate(GenerationConfig("a red circle", steps=steps, sampler=sampler, seed=0), attention=ctl)
    seen = sorted({s for s, *_ in ctl.calls})
    assert seen == list(range(steps)) and ctl.forward_count == forwards
    assert {shape[0] for *_, shape in ctl.calls} == {1}  # only the cond row of the [uncond, cond] batch


def test_cond_rows_rule():
    ctl = AttentionController(batch_size=2)
    ctl.batch = 4
    assert ctl.cond_rows() == slice(2, 4)
    ctl.batch = 2
    assert ctl.cond_rows() == slice(0, 2)  # CFG scale 1: every row is conditional
    ctl = AttentionController(cfg=True)
    ctl.batch = 2
    assert ctl.cond_rows() == slice(1, 2)
    with pytest.raises(ConfigError, match="batch_size"):
        AttentionController(batch_size=0)


def test_store_maps_sum_to_one_and_follow_filters(pipe):
    config = GenerationConfig("a red circle on a blue background", steps=2, batch_size=2, seed=4)
    store = AttentionStore(batch_size=2)
    pipe.generate(config, attention=store)
    maps = store.maps()
    assert maps.shape == (2, 8, 8, 77)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 8, 8), atol=1e-5)
    assert store.counts == {(8, 8): 2 * 3, (4, 4): 2 * 1}  # per step: 3 layers at 8x8, mid at 4x4
    assert not torch.allclose(maps[0], maps[1])  # two seeds, two different images' maps
    only_mid = AttentionStore(places=["mid"], batch_size=2)
    pipe.generate(config, attention=only_mid)
    assert only_mid.counts == {(4, 4): 2} and only_mid.maps().shape == (2, 4, 4, 77)
    first_step = AttentionStore(resolutions=[8], steps=(0, 1), batch_size=2)
    pipe.generate(config, attention=first_step)
    assert first_step.counts == {(8, 8): 3}
    for bad in (dict(places=["left"]), dict(resolutions=[0]), dict(steps=(2, 1))):
        with pytest.raises(ConfigError):
            AttentionStore(**bad)
    nothing = AttentionStore(resolutions=[64])
    pipe.generate(config, attention=nothing)
    with pytest.raises(ConfigError, match="no cross-attention was recorded"):
        nothing.maps()


def test_heatmaps_and_figure():
    rgb = colormap(np.array([0.0, 0.5, 1.0, 2.0]))
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 3)
    assert tuple(rgb[0]) == (68, 1, 84) and tuple(rgb[2]) == tuple(rgb[3]) == (253, 231, 37)
    maps = torch.zeros(4, 4, 77)
    maps[:2, :2, 3] = 1.0   # token 3 looks at the top-left quarter
    maps[..., 5] = 0.2      # token 5 is flat
    heats = token_heatmaps(maps, [3, 5], (32, 32))
    assert heats[0].shape == (32, 32) and heats[0].max() == 1 and heats[0][24:, 24:].max() == 0
    assert heats[0][:12, :12].min() > 0.9 and heats[1].abs().max() == 0
    with pytest.raises(ConfigError, match="outside"):
        token_heatmaps(maps, [80], (32, 32))
    from sdlab.attention.maps import TokenLabel

    image = Image.new("RGB", (32, 32), (255, 0, 0))
    overlays, grid = attention_figure(image, maps, [TokenLabel(3, "red"), TokenLabel(5, "circle")], cols=3)
    assert len(overlays) == 2 and grid.size == (3 * 64, 64 + 14)
    top_left, bottom_right = np.asarray(overlays[0])[2, 2], np.asarray(overlays[0])[30, 30]
    assert top_left[1] > bottom_right[1]  # hot (yellow) vs cold (purple) under the same red


def test_token_labels_follow_the_encoded_positions(pipe):
    labels = token_labels(pipe.c.tokenizer, "a (red:1.3) circle")
    assert [(t.position, t.text) for t in labels] == [(1, "a"), (2, "red"), (3, "circle")]


def test_attend_cli_writes_image_overlays_and_grid(tiny_model_dir, tmp_path, capsys):
    from sdlab.cli.main import main

    prompt = "a red circle"
    rc = main(["attend", prompt, "--model", str(tiny_model_dir), "--steps", "2", "--seed", "5",
               "--out", str(tmp_path), "--res", "8"])
    assert rc == 0
    paths = capsys.readouterr().out.split()
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert names == ["00000-5-image.png", "00000-5-token01-a.png", "00000-5-token02-red.png",
                     "00000-5-token03-circle.png", "00000-5-grid.png"]
    image = Image.open(paths[0])
    assert image.size == (16, 16)  # the tiny VAE downsamples 2x: 8x8 latents
    assert Image.open(paths[-1]).size == (4 * 32, 32 + 14)  # image + 3 tokens, each 2x with a label strip
    assert main(["attend", prompt, "--model", str(tiny_model_dir), "--steps", "1", "--res", "64",
                 "--out", str(tmp_path)]) == 2
    assert "no cross-attention was recorded" in capsys.readouterr().err
    assert main(["attend", prompt, "--model", str(tiny_model_dir), "--steps", "1", "--step-range", "2", "1",
                 "--out", str(tmp_path)]) == 2
    assert "steps must be a (start, end) pair" in capsys.readouterr().err
