"""Prompt-to-prompt: token alignment, attention injection and reweighting, local blend, edit API/CLI, errors."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.attention import attention_control
from sdlab.attention.align import prompt_tokens, refine_mapping, replace_mapping
from sdlab.attention.edit import EditConfig, build_controller, edit
from sdlab.attention.p2p import PromptToPromptController
from sdlab.config import GenerationConfig
from sdlab.errors import ConfigError

from bench_util import load_benchmark
from test_attention import sd15_layout_unet


class Recording(PromptToPromptController):
    """Keeps (step, layer name, is_cross, probs before, probs after) of every edited layer."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.log = []

    def forward(self, probs, is_cross, place_in_unet, layer):
        out = super().forward(probs, is_cross, place_in_unet, layer)
        self.log.append((self.step, layer.name, is_cross, probs.clone(), out.clone()))
        return out


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    from sdlab.pipeline import Pipeline

    return Pipeline.load(tiny_model_dir)


def _ids(tok, text):
    return prompt_tokens(tok, text)


def test_word_positions_and_mappings(pipe):
    tok = pipe.c.tokenizer
    src, tgt = _ids(tok, "a red circle"), _ids(tok, "a large red circle")
    assert src.length == 3 and src.positions("circle") == [3] and tgt.positions("RED") == [3]
    mapper, alphas = refine_mapping(src, tgt)
    assert mapper[:6].tolist() == [0, 1, 2, 2, 3, 4] and alphas[:6].tolist() == [1, 1, 0, 1, 1, 1]
    assert mapper[6].item() == 5 and alphas[6:].min() == 1  # padding shifted by the added token
    mapper, alphas = replace_mapping(src, _ids(tok, "a red square"))
    assert torch.equal(mapper, torch.arange(77)) and alphas.min() == 1
    with pytest.raises(ConfigError, match="same number of tokens.*has 3.*has 4.*refine"):
        replace_mapping(src, tgt)
    with pytest.raises(ConfigError, match="'star' is not in the prompt 'a red circle'; its words are: a, red, circle"):
        src.positions("star")
    with pytest.raises(ConfigError, match="at most 75 tokens"):
        prompt_tokens(tok, " ".join(["red circle"] * 40))


@pytest.mark.parametrize("bad,match", [
    (dict(cross_replace=1.5), "cross_replace must be a number in \\[0, 1\\]"),
    (dict(self_replace=-0.1), "self_replace must be a number in \\[0, 1\\]"),
    (dict(cross_replace="0.5"), "cross_replace"),
    (dict(blend_threshold=2), "blend_threshold"),
    (dict(mode="swap"), "mode must be one of replace, refine, reweight"),
    (dict(mode="reweight"), "needs at least one word"),
    (dict(reweight={"red": "x"}), "reweight factor of 'red'"),
    (dict(reweight={"red": 100.0}), "reweight factor"),
])
def test_edit_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        EditConfig(**bad)


def test_edit_errors_name_the_word(pipe):
    tok = pipe.c.tokenizer
    with pytest.raises(ConfigError, match="'blue' is not in the prompt 'a red square'"):
        build_controller(tok, "a red circle", "a red square", EditConfig(reweight={"blue": 2}), 10)
    with pytest.raises(ConfigError, match="blend word 'star' is in neither prompt"):
        build_controller(tok, "a red circle", "a red square", EditConfig(blend=("star",)), 10)
    with pytest.raises(ConfigError, match="same number of tokens"):
        edit(pipe, "a red circle", "a big red circle", steps=1)
    with pytest.raises(ConfigError, match="unknown edit option.*cross_replace"):
        edit(pipe, "a red circle", "a red square", cross=0.5)
    with pytest.raises(ConfigError, match="either in config or as keywords"):
        edit(pipe, "a red circle", "a red square", config=GenerationConfig("a red circle"), seed=3)


def _cfg_batch(unet, tok_len=77, seed=0):
    """A CFG batch [uncond_src, uncond_tgt, cond_src, cond_tgt] of equal latents, as the edit runs it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g).repeat(4, 1, 1, 1)
    uncond = torch.randn(1, tok_len, unet.config.cross_attention_dim, generator=g)
    cond = torch.randn(2, tok_len, unet.config.cross_attention_dim, generator=g)
    return x, torch.cat([uncond, uncond, cond])


def _run(unet, ctl, x, c, timesteps):
    with torch.no_grad(), attention_control(unet, ctl):
        for t in timesteps:
            unet(x, torch.full((x.shape[0],), float(t)), encoder_hidden_states=c)


def _check_injection(unet):
    """cross_replace = 1 (all steps): target cross maps == source maps; self maps too while self steps last."""
    mapper, alphas = torch.arange(77), torch.ones(77)
    ctl = Recording(mapper, alphas, cross_steps=2, self_steps=1, self_max_queries=64)
    x, c = _cfg_batch(unet)
    _run(unet, ctl, x, c, [900, 500])
    cross = [(s, before, after) for s, _, is_cross, before, after in ctl.log if is_cross]
    assert len(cross) == 2 * sum(k.endswith("attn2.processor") for k in unet.attn_processors)
    for _, before, after in cross:
        assert not torch.allclose(before[0], before[1], atol=1e-4)  # two prompts attend differently...
        assert torch.equal(after[1], after[0]) and torch.equal(after[0], before[0])  # ...until injected
    selfs = [(s, before, after) for s, _, is_cross, before, after in ctl.log if not is_cross]
    assert selfs and {s for s, *_ in selfs} == {0}  # only during the self-replace steps
    assert all(b.shape[2] <= 64 and torch.equal(a[1], b[0]) for _, b, a in selfs)


def test_replace_injects_source_maps_tiny(pipe):
    _check_injection(pipe.c.unet)


def test_replace_injects_source_maps_sd15_layout():
    _check_injection(sd15_layout_unet())


@pytest.mark.slow
def test_replace_injects_source_maps_full_sd15():
    """The full-width SD 1.5 UNet (860 M random parameters) on 8x8 latents."""
    _check_injection(sd15_layout_unet(block_out_channels=[320, 640, 1280, 1280], norm_num_groups=32))


def test_reweight_scales_the_chosen_token(pipe):
    tok = pipe.c.tokenizer
    cfg = EditConfig(mode="reweight", reweight={"red": 3.0}, cross_replace=0.5, self_replace=0.0)
    base = build_controller(tok, "a red circle", "a red circle", cfg, steps=2)
    ctl = Recording(base.mapper, base.alphas, cross_steps=base.cross_steps, self_steps=0,
                    equalizer=base.equalizer)
    assert ctl.cross_steps == 1 and base.equalizer[0, 2] == 3 and base.equalizer.sum() == 76 + 3
    x, c = _cfg_batch(pipe.c.unet)
    _run(pipe.c.unet, ctl, x, c, [900, 500])
    red, other = 2, [1, 3]
    for step, _, is_cross, before, after in ctl.log:
        assert is_cross
        src_ref = before[0] if step == 0 else before[1]  # step 0: the source's maps; then the target's own
        assert torch.allclose(after[1][..., red], 3 * src_ref[..., red], atol=1e-6)
        assert torch.allclose(after[1][..., other], src_ref[..., other], atol=1e-6)
        assert torch.equal(after[0], before[0])  # the source row is never touched


def test_edit_source_row_is_the_plain_generation(pipe):
    config = GenerationConfig("a red circle on a blue background", steps=3, seed=11)
    r = edit(pipe, config.prompt, "a red square on a blue background", config=config)
    plain = np.asarray(pipe.generate(config).images[0], np.int16)
    assert np.abs(np.asarray(r.source_image, np.int16) - plain).max() <= 2
    assert r.settings["edit"]["mode"] == "replace" and r.settings["target_prompt"].endswith("blue background")
    same = edit(pipe, config.prompt, config.prompt, config=config, cross_replace=1.0, self_replace=1.0)
    assert np.array_equal(np.asarray(same.source_image), np.asarray(same.target_image))


def test_batched_edits_match_single_edits(pipe):
    from sdlab.attention.edit import edit_batch

    config = GenerationConfig("unused", steps=2, seed=0)
    cfg = EditConfig(mode="refine", reweight={"red": 2.0}, blend=("large",))
    pairs = [("a red circle", "a large red circle"), ("a red star on a blue background", "a large red star")]
    both = edit_batch(pipe, [s for s, _ in pairs], [t for _, t in pairs], config, cfg, seeds=[5, 9])
    for (source, target), seed, r in zip(pairs, (5, 9), both):
        one = edit(pipe, source, target, config=GenerationConfig(source, steps=2, seed=seed), edit=cfg)
        assert (r.source_prompt, r.target_prompt, r.seed) == (source, target, seed)
        for a, b in ((r.source_image, one.source_image), (r.target_image, one.target_image)):
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 2
        assert torch.equal(r.mask, one.mask)
    with pytest.raises(ConfigError, match="one seed per edit pair"):
        edit_batch(pipe, ["a red circle"], ["a red star"], config, EditConfig(), seeds=[1, 2])


def test_local_blend_mask_controls_what_changes(pipe):
    config = GenerationConfig("a red circle", steps=3, seed=2, sampler="Euler")
    args = dict(config=config, cross_replace=0.0, self_replace=0.0, blend=("circle", "square"), blend_start=0.0)
    nothing = edit(pipe, "a red circle", "a red square", blend_threshold=1.0, **args)  # empty mask
    assert np.array_equal(np.asarray(nothing.source_image), np.asarray(nothing.target_image))
    assert nothing.mask is not None and not nothing.mask.any()
    everything = edit(pipe, "a red circle", "a red square", blend_threshold=0.0, **args)  # full mask
    free = edit(pipe, "a red circle", "a red square", config=config, cross_replace=0.0, self_replace=0.0)
    assert everything.mask.all()
    diff = np.abs(np.asarray(everything.target_image, np.int16) - np.asarray(free.target_image, np.int16))
    assert diff.max() <= 1  # explicit vs SDPA attention: rounding only


def test_local_blend_mask_from_synthetic_maps():
    from sdlab.attention.p2p import LocalBlend
    from sdlab.callbacks import StepEvent

    blend = LocalBlend([([3], [4])], threshold=0.5, start=1)
    probs = torch.full((2, 2, 64, 77), 0.01)
    src_map, tgt_map = torch.zeros(8, 8), torch.zeros(8, 8)
    src_map[1, 1], tgt_map[6, 6] = 1.0, 1.0                      # the word sits top-left in the source,
    probs[0, :, :, 3] = src_map.flatten()                          # bottom-right in the target
    probs[1, :, :, 4] = tgt_map.flatten()
    blend.record(probs, (8, 8), (8, 8))
    blend.record(probs[..., :16, :], (4, 4), (8, 8))                # a coarser layer is upsampled
    x = torch.stack([torch.zeros(4, 8, 8), torch.ones(4, 8, 8)])
    blend(StepEvent(step=0, total=2, x=x))                          # before `start`: no blending
    assert x[1].min() == 1 and blend.mask is None
    blend.record(probs, (8, 8), (8, 8))
    blend(StepEvent(step=1, total=2, x=x))
    m = blend.mask[0, 0]
    assert m[0:3, 0:3].all() and m[5:8, 5:8].all() and not m[0:3, 5:8].any()  # union of both 3x3-dilated spots
    assert torch.equal(x[1, 0], m.float()) and x[0].max() == 0      # outside the mask: the source's latents


def test_edit_cli(tiny_model_dir, tmp_path, capsys):
    from sdlab.cli.main import main
    from sdlab.io.metadata import read_png_metadata

    rc = main(["edit", "a red circle", "a red square", "--model", str(tiny_model_dir), "--steps", "2",
               "--seed", "4", "--reweight", "red=2", "--out", str(tmp_path)])
    assert rc == 0
    paths = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["00000-4-source.png", "00000-4-target.png", "00000-4-pair.png"]
    meta = read_png_metadata(paths[1])
    assert meta["prompt"] == "a red square" and meta["settings"]["edit"]["reweight"] == {"red": 2.0}
    assert Image.open(paths[2]).size == (32, 16)
    for bad, msg in ((["--reweight", "red"], "WORD=FACTOR"), (["--cross-replace", "2"], "cross_replace"),
                     (["--reweight", "blue=2"], "'blue' is not in the prompt")):
        assert main(["edit", "a red circle", "a red square", "--model", str(tiny_model_dir), "--steps", "1",
                     "--out", str(tmp_path), *bad]) == 2
        assert msg in capsys.readouterr().err


# --- the oracle measurements of benchmarks/p2p_eval.py ------------------------------------------

def test_eval_metrics_on_rendered_scenes(monkeypatch):
    import random

    from sdlab.evaluate.masks import iou, otsu_threshold
    from sdlab.world import oracle
    from sdlab.world.render import render
    from sdlab.world.scene import single_object_scene

    p2p_eval = load_benchmark("p2p_eval", monkeypatch)
    _compare, _swap_shape, colour_stats = p2p_eval._compare, p2p_eval._swap_shape, p2p_eval.colour_stats
    values = np.concatenate([np.full(300, 0.1), np.full(100, 0.9)])
    assert 0.1 <= otsu_threshold(values) < 0.9
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert iou(a, a) == 1 and iou(a, ~a) == 0 and iou(a, np.ones_like(a)) == 0.5
    circle = render(single_object_scene("circle", "red", "large", "left", "blue", random.Random(0)))
    square = render(single_object_scene("square", "red", "large", "left", "blue", random.Random(0)))
    moved = render(single_object_scene("square", "green", "small", "right", "blue", random.Random(0)))
    src = oracle.read(circle).main
    same = _compare(src, oracle.read(square).main, "square")
    assert same["shape_changed"] and same["shape_is_target"] and same["kept_layout"] and same["mask_iou"] > 0.6
    other = _compare(src, oracle.read(moved).main, "square")
    assert not (other["kept_position"] or other["kept_size"] or other["kept_color"]) and other["mask_iou"] < 0.05
    area, sat = colour_stats(circle, "red")
    assert abs(area - src.area / 64**2) < 0.02 and sat > 0.7
    assert colour_stats(circle, "green")[0] == 0
    assert _swap_shape("a photo of a large red circle on the left", "circle", "star").endswith("red star on the left")


def test_eval_runs_on_a_tiny_model(pipe, monkeypatch):
    evaluate = load_benchmark("p2p_eval", monkeypatch).evaluate

    report = evaluate(pipe, n=2, steps=1, batch=2, cross_replace=(0.8, 0.4), factors=(0.5, 1.0))
    assert set(report["replace"]) == {"p2p_cross0.8_self0.4", "p2p_cross0.4_self0.4", "plain_prompt"}
    assert report["reweight_colour"]["factors"] == [0.5, 1.0] and report["reweight_colour"]["n"] == 2
    assert all(0 <= r["n"] <= 2 for r in report["replace"].values())


def test_eval_results_go_to_the_experiments_one_file(tiny_model_dir, tmp_path, monkeypatch, capsys):
    p2p_eval = load_benchmark("p2p_eval", monkeypatch)
    monkeypatch.setattr(sys.modules["report"], "RESULTS_DIR", tmp_path)
    (tmp_path / "p2p_eval.json").write_text('{"n": 64}')           # an earlier run's result
    args = ["--model", str(tiny_model_dir), "--steps", "1", "--batch", "1", "--cross-replace", "0.8", "--results"]
    assert p2p_eval.main([*args, "--n", "1", "--n-reweight", "1"]) == 0
    assert [f.name for f in tmp_path.iterdir()] == ["p2p_eval.json"]
    assert json.loads((tmp_path / "p2p_eval.json").read_text())["n"] == 1
    with pytest.raises(SystemExit):
        p2p_eval.main([*args, "--out", str(tmp_path / "other.json")])
    assert "not allowed with argument" in capsys.readouterr().err


def test_word_cross_replace_frees_one_word_early(pipe):
    """The paper's per-word cross_replace_steps: the swapped word's injection stops at its own
    fraction while the others keep the default."""
    cfg = EditConfig(mode="replace", cross_replace=0.8, word_cross_replace={"square": 0.2})
    ctrl = build_controller(pipe.c.tokenizer, "a red circle", "a red square", cfg, steps=10)
    pos = prompt_tokens(pipe.c.tokenizer, "a red square").positions("square")[0]
    assert ctrl.cross_steps == 8 and ctrl.token_steps[0, pos] == 2
    assert (ctrl.token_steps[0, :pos] == 8).all()
    base, target = torch.rand(1, 2, 4, ctrl.mapper.shape[1]), torch.rand(1, 2, 4, ctrl.mapper.shape[1])
    ctrl.step = 1
    early = ctrl.edit_cross(base, target)
    ctrl.step = 5
    late = ctrl.edit_cross(base, target)
    assert torch.allclose(early[..., pos], base[..., pos]) and torch.allclose(late[..., pos], target[..., pos])
    assert torch.allclose(late[..., 1], base[..., 1])
    with pytest.raises(ConfigError, match="word_cross_replace of 'square' must be a number in"):
        EditConfig(word_cross_replace={"square": 1.5})
    with pytest.raises(ConfigError, match="is not in the prompt|not in"):
        build_controller(pipe.c.tokenizer, "a red circle", "a red square", EditConfig(word_cross_replace={"star": 0.2}), 10)
