"""Token-embedding replacement and mixing, and prompt interpolation, on a tiny random model."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab import GenerationConfig
from sdlab.errors import ConfigError
from sdlab.pipeline import Pipeline
from sdlab.text.embedding_ops import (encode_with_overrides, load_concept, mix, plan_overrides,
                                      replacement_vectors, token_embedding_hook)
from sdlab.text.interpolation import interpolate, interpolate_embeddings, lerp, slerp
from sdlab.text.tokens import text_embeddings_module

from bench_util import load_benchmark

PROMPT = "a large red circle on a blue background"


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def enc(pipe, prompt):
    return pipe.encode_prompt([prompt])


def hooks(pipe):
    return text_embeddings_module(pipe.c.text_encoder).token_embedding._forward_hooks


def test_replace_by_itself_is_bit_equal(pipe):
    assert torch.equal(encode_with_overrides(pipe, PROMPT, {"circle": "circle"}), enc(pipe, PROMPT))


def test_replace_by_another_word_equals_that_prompt(pipe):
    got = encode_with_overrides(pipe, PROMPT, {"circle": "square"})
    want = enc(pipe, PROMPT.replace("circle", "square"))
    assert (got - want).abs().max() <= 1e-6
    assert (got - enc(pipe, PROMPT)).abs().max() > 1e-3  # and it did change something
    # prompt weights and a token id work the same way
    sq = pipe.c.tokenizer.get_vocab()["square</w>"]
    got = encode_with_overrides(pipe, "a (circle:1.3) and a red circle", {"circle": sq})
    assert (got - enc(pipe, "a (square:1.3) and a red square")).abs().max() <= 1e-6


def test_replace_in_the_second_chunk_of_a_long_prompt(pipe):
    long = ", ".join(["a blue background"] * 30) + ", a red circle"
    got = encode_with_overrides(pipe, long, {"circle": "square"})
    assert got.shape[1] == 2 * 77
    assert (got - enc(pipe, long.replace("circle", "square"))).abs().max() <= 1e-6


def test_hook_is_removed_afterwards(pipe):
    before = enc(pipe, PROMPT)
    encode_with_overrides(pipe, PROMPT, {"circle": "square"})
    assert len(hooks(pipe)) == 0 and torch.equal(enc(pipe, PROMPT), before)
    star = enc(pipe, "a small green star")
    ids, edits = plan_overrides(pipe.c.text_encoder, pipe.c.tokenizer, PROMPT, {"circle": "square"})
    with pytest.raises(RuntimeError), token_embedding_hook(pipe.c.text_encoder, ids, edits):
        assert len(hooks(pipe)) == 1
        # a different prompt encoded inside the context is left alone
        assert torch.equal(enc(pipe, "a small green star"), star)
        raise RuntimeError("boom")
    assert len(hooks(pipe)) == 0 and torch.equal(enc(pipe, PROMPT), before)


def test_mix_weights_one_and_zero_reproduce_the_pure_words(pipe):
    circle, square = enc(pipe, PROMPT), enc(pipe, PROMPT.replace("circle", "square"))
    assert torch.equal(encode_with_overrides(pipe, PROMPT, {"circle": mix({"circle": 1, "square": 0})}), circle)
    assert (encode_with_overrides(pipe, PROMPT, {"circle": mix({"circle": 0, "square": 1})}) - square).abs().max() <= 1e-6
    half = encode_with_overrides(pipe, PROMPT, {"circle": mix({"circle": 2, "square": 2})})
    assert (half - circle).abs().max() > 1e-4 and (half - square).abs().max() > 1e-4
    table = text_embeddings_module(pipe.c.text_encoder).token_embedding.weight
    vocab = pipe.c.tokenizer.get_vocab()
    vec = replacement_vectors(pipe.c.text_encoder, pipe.c.tokenizer, "circle", 1, mix({"circle": 1, "square": 3}))
    assert torch.allclose(vec[0], 0.25 * table[vocab["circle</w>"]] + 0.75 * table[vocab["square</w>"]], atol=1e-6)


def test_vector_replacement_and_concept_file(pipe, tmp_path):
    from safetensors.torch import save_file

    table = text_embeddings_module(pipe.c.text_encoder).token_embedding.weight
    vec = table[pipe.c.tokenizer.get_vocab()["square</w>"]].detach().clone()
    save_file({"<my-shape>": vec}, tmp_path / "learned_embeds.safetensors")
    concept = load_concept(tmp_path / "learned_embeds.safetensors")
    assert concept.shape == (1, table.shape[1])
    got = encode_with_overrides(pipe, PROMPT, {"circle": concept})
    assert (got - enc(pipe, PROMPT.replace("circle", "square"))).abs().max() <= 1e-6
    with pytest.raises(ConfigError, match=r"shape \(32,\) or \(1, 32\)"):
        encode_with_overrides(pipe, PROMPT, {"circle": torch.zeros(2, 32)})


@pytest.mark.parametrize("overrides, message", [
    ({"hexagon": "square"}, "'hexagon' is not in the prompt; the prompt's tokens are: a, large, red, circle, on, a, blue"),
    ({"circle": "quetzalcoatl"}, "unknown token: 'quetzalcoatl' is 4 token"),
    ({"circle": 10**6}, "unknown token id 1000000"),
    ({"circle": 1.5}, "a replacement must be a word, a token id, a tensor or mix"),
    ({}, "non-empty mapping"),
])
def test_errors_are_clear(pipe, overrides, message):
    with pytest.raises(ConfigError, match=message):
        encode_with_overrides(pipe, PROMPT, overrides)
    assert len(hooks(pipe)) == 0


def test_mix_rejects_bad_weights():
    with pytest.raises(ConfigError, match="must sum to a positive number, got 1 \\+ -1 = 0"):
        mix({"circle": 1.0, "square": -1.0})
    with pytest.raises(ConfigError, match="weight of 'circle' must be a finite number"):
        mix({"circle": "half"})
    with pytest.raises(ConfigError, match="non-empty mapping"):
        mix({})


def test_overridden_cond_drives_generation(pipe):
    config = GenerationConfig(PROMPT, steps=3, seed=5, cfg_scale=2.0)
    cond = encode_with_overrides(pipe, PROMPT, {"circle": "square"})
    got = np.asarray(pipe.generate(config, cond=cond).images[0], np.int16)
    want = np.asarray(pipe.generate(GenerationConfig(PROMPT.replace("circle", "square"), steps=3, seed=5,
                                                     cfg_scale=2.0)).images[0], np.int16)
    assert np.abs(got - want).max() <= 1


def test_lerp_and_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 5, 8, generator=g), torch.randn(1, 5, 8, generator=g)
    for method in ("lerp", "slerp"):
        frames = interpolate_embeddings(a, b, 5, method)
        assert frames.shape == (5, 5, 8) and torch.equal(frames[0], a[0]) and torch.equal(frames[-1], b[0])
    assert torch.allclose(lerp(a, b, 0.5), (a + b) / 2)
    ua, ub = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    assert torch.allclose(slerp(ua, ub, 0.3).norm(dim=-1), torch.ones(1, 5), atol=1e-5)  # stays on the sphere
    assert torch.allclose(slerp(a, a, 0.5), a)  # parallel: lerp fallback, no NaN
    with pytest.raises(ConfigError, match="method must be one of lerp, slerp"):
        interpolate_embeddings(a, b, 3, "cubic")
    with pytest.raises(ConfigError, match="frames must be an integer between 2"):
        interpolate_embeddings(a, b, 1)


def test_interpolate_endpoints_and_shared_seed(pipe, tmp_path):
    config = GenerationConfig("x", steps=3, cfg_scale=2.0)
    result = interpolate(pipe, PROMPT, "a small green star", n=3, seed=11, config=config, batch_size=2)
    assert torch.equal(result.cond[0], enc(pipe, PROMPT)[0]) and torch.equal(result.cond[-1], enc(pipe, "a small green star")[0])
    assert result.ts == [0.0, 0.5, 1.0] and len(result.images) == 3
    first = pipe.generate(GenerationConfig(PROMPT, steps=3, cfg_scale=2.0, seed=11)).images[0]
    assert np.abs(np.asarray(result.images[0], np.int16) - np.asarray(first, np.int16)).max() <= 1

    from sdlab.io.sweeps import save_sweep, value_labels

    labels = value_labels(result.ts, "t")
    assert labels == ["t=0", "t=0.5", "t=1"]
    with Image.open(save_sweep(result.images, labels, tmp_path / "s.gif", scale=2)) as im:
        assert im.n_frames == 3
    with Image.open(save_sweep(result.images, labels, tmp_path / "s.png", scale=2)) as im:
        assert im.width == 3 * 2 * pipe.native_size


def test_mix_eval_squareness_and_summary(pipe, tiny_model_dir, tmp_path, monkeypatch):
    from sdlab.evaluate.masks import squareness

    mix_eval = load_benchmark("mix_eval", monkeypatch)
    evaluate_mix, summarize = mix_eval.evaluate_mix, mix_eval.summarize

    yy, xx = np.mgrid[:41, :41]
    disc = (xx - 20) ** 2 + (yy - 20) ** 2 <= 20.5 ** 2
    assert abs(squareness(disc) - np.pi / 4) < 0.02 and squareness(np.ones((5, 7), bool)) == 1.0
    ref = mix_eval.reference_squareness("large", n=2)
    assert 0.72 < ref["circle"] < 0.82 and ref["square"] > 0.97
    r = lambda shape, s: {"shape": shape, "squareness": s}
    summary = summarize({0.0: [r("circle", 0.78), r("circle", 0.80)], 0.5: [r("square", 0.9), r("none", float("nan"))],
                         1.0: [r("square", 1.0), r("star", 0.7)]})
    assert summary["per_weight"]["0.5"]["rates"] == {"circle": 0.0, "square": 0.5, "none": 0.5, "other": 0.0}
    assert summary["per_weight"]["1"]["squareness_mean"] == 0.85
    # seed 0: 0.78 <= 0.9 <= 1.0; seed 1 has no object at w=0.5. Means 0.79, 0.9, 0.85: not monotone
    assert summary["middle_between_ends_rate"] == 0.5 and summary["squareness_monotone"] is False
    assert summary["ends_ordered_rate"] == 0.5 and summary["per_weight"]["1"]["squareness_gain_vs_w0"] == 0.06
    summary = summarize({0.0: [r("circle", 0.8)], 0.5: [r("circle", 0.8)], 1.0: [r("square", 0.95)]})
    assert summary["squareness_monotone"] is True and summary["middle_between_ends_rate"] == 1.0
    report, images = evaluate_mix(pipe, n=2, weights=(0.0, 1.0), steps=2, cfg=2.0)
    assert set(report["per_weight"]) == {"0", "1"} and len(images[1.0]) == 2
    assert abs(sum(report["per_weight"]["0"]["rates"].values()) - 1) < 1e-6
    monkeypatch.setattr(sys.modules["report"], "RESULTS_DIR", tmp_path)      # --results: the experiment's one file
    (tmp_path / "mix_eval.json").write_text('{"n": 32}')
    assert mix_eval.main(["--model", str(tiny_model_dir), "--n", "1", "--weights", "0", "1", "--steps", "1",
                          "--results"]) == 0
    assert [f.name for f in tmp_path.iterdir()] == ["mix_eval.json"]
    assert json.loads((tmp_path / "mix_eval.json").read_text())["n"] == 1
