"""A1111 prompt editing [from:to:when] and alternation [a|b] (sdlab.text.prompt_schedule), wired
into Pipeline's prompt encoding through ScheduledCond (sdlab.guidance.cfg)."""

import numpy as np
import pytest
import torch

from sdlab import GenerationConfig, Pipeline
from sdlab.errors import ConfigError
from sdlab.guidance.cfg import CFGDenoiser, GuidanceCond, ScheduledCond
from sdlab.io.metadata import parse_infotext
from sdlab.text.prompt_schedule import prompt_schedule

# (prompt, steps, hires_steps, schedule as A1111's prompt_parser.get_learned_conditioning_prompt_schedules
# gives it). Most rows are A1111's own doctests (modules/prompt_parser.py, 10 steps).
A1111_TABLE = [
    ("test", 10, None, [(10, "test")]),
    ("a [b:3]", 10, None, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, None, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, None, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, None, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, None, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, None, [(1, "abe"), (2, "ace"), (10, "ade")]),        # nested
    ("a [unbalanced", 10, None, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, None, [(5, "a  c"), (10, "a b c")]),                      # a fraction of the steps
    ("((a][:b:c [d:3]", 10, None, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 10, None, [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]),   # alternation per step
    ("[fe|]male", 10, None, [(i, "female" if i % 2 else "male") for i in range(1, 11)]),
    ("[fe|||]male", 10, None, [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),
    ("a [b:.5] c", 10, 10, [(10, "a b c")]),                     # hires pass: a fraction counts from pass 1
    ("a [b:1.5] c", 10, 10, [(5, "a  c"), (10, "a b c")]),
    ("a [b:15] c", 10, 10, [(5, "a  c"), (10, "a b c")]),        # an integer counts on from pass 1's steps
    # the brief's case: an integer is a step, so [a:b:10] of 20 steps is a for steps 0..10, b after
    ("[a:b:10]", 20, None, [(10, "a"), (20, "b")]),
    ("[a:b:0.5]", 20, None, [(10, "a"), (20, "b")]),
    ("[a:b:0.25]", 10, None, [(2, "a"), (10, "b")]),             # int(0.25 * 10): rounded down
    ("[a:b:1.0]", 10, None, [(10, "a")]),                        # a fraction 1.0 is every step
    ("[a:b:1]", 10, None, [(1, "a"), (10, "b")]),                # an integer 1 is step 1
    ("[a:b:30]", 20, None, [(20, "a")]),                         # capped at the steps
    ("[red:blue:0]", 20, None, [(20, "blue")]),
    ("[a::3] b", 10, None, [(3, "a b"), (10, " b")]),           # [from::when] removes
    (r"a \[b:c:0.5\] d", 10, None, [(10, r"a \[b:c:0.5\] d")]),  # escaped brackets are text
]

# prompts without editing come out exactly as typed (weights, BREAK, LoRA tags, escapes are read later)
PLAIN = ["a large red circle on a blue background", "(red:1.3) circle BREAK [blue] background",
         "a red <lora:my-heart:0.8> star", r"a \(literal\) word, 50% off: yes", "", "  spaces  ", "a [b] c"]


@pytest.mark.parametrize("prompt,steps,hires,expected", A1111_TABLE)
def test_schedule_as_a1111(prompt, steps, hires, expected):
    assert prompt_schedule(prompt, steps, hires) == expected


@pytest.mark.parametrize("prompt", PLAIN)
def test_plain_prompts_untouched(prompt):
    assert prompt_schedule(prompt, 25) == [(25, prompt)]


def test_bad_steps_refused():
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        prompt_schedule("a [b:c:2]", 0)


def test_scheduled_cond_picks_by_step():
    a, b, c = (torch.full((1, 2, 3), float(i)) for i in range(3))
    s = ScheduledCond((1, 3, 10), (a, b, c))
    assert [float(s.at(i)[0, 0, 0]) for i in range(6)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="one shape"):
        ScheduledCond((1, 2), (a, torch.zeros(1, 4, 3)))


def test_cfg_denoiser_follows_the_step():
    seen = []
    cfg = CFGDenoiser(lambda x, s, c: seen.append(float(c[0, 0, 0])) or x, 1.0)
    cond = GuidanceCond(cond=ScheduledCond((0, 5), (torch.zeros(1, 1, 1), torch.ones(1, 1, 1))))

    class Event:
        def __init__(self, step):
            self.step = step

    for step in range(3):
        cfg(torch.zeros(1), 1.0, cond)
        cfg.on_step(Event(step))
    assert seen == [0.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def _latents(pipe, config, **kw):
    return pipe.sample_latents(config, [config.seed], *pipe.size(config), **kw)


def test_edit_at_zero_is_the_target_bit_for_bit(pipe):
    base = dict(seed=3, steps=6, cfg_scale=5.0)
    edited = pipe.generate(GenerationConfig("a [red:blue:0] circle", negative_prompt="[x:green:0]", **base))
    plain = pipe.generate(GenerationConfig("a blue circle", negative_prompt="green", **base))
    assert np.array_equal(np.asarray(edited.images[0]), np.asarray(plain.images[0]))
    prompt, negative, params = parse_infotext(edited.infotexts[0])
    assert (prompt, negative) == ("a [red:blue:0] circle", "[x:green:0]")    # as typed
    assert edited.settings[0]["prompt"] == "a [red:blue:0] circle"


def test_plain_prompt_output_unchanged_by_the_wiring(pipe):
    """The loop as it was before prompt editing: one encoding of each prompt, CFG, the sampler."""
    from sdlab.sampling import get_sigmas, resolve_sampler
    from sdlab.sampling.noise import batch_noise

    config = GenerationConfig("a red circle", negative_prompt="blue", seed=5, steps=5, cfg_scale=4.0,
                              sampler="Euler a")
    spec, kind = resolve_sampler(config.sampler, config.schedule)
    gens = [torch.Generator("cpu").manual_seed(5)]
    w, h = pipe.size(config)
    x = batch_noise((4, h // pipe.vae_scale, w // pipe.vae_scale), gens)
    sigmas = get_sigmas(pipe.schedule, config.steps, kind).to(torch.float32)
    cond = GuidanceCond(cond=pipe.encode_prompt(["a red circle"]), uncond=pipe.encode_prompt(["blue"]))
    reference = spec.fn(CFGDenoiser(pipe.denoiser, 4.0), x * sigmas[0], sigmas, extra_args={"cond": cond},
                        generator=gens)
    assert torch.equal(_latents(pipe, config), reference)


def test_the_text_switches_at_the_step(pipe):
    """[red:blue:0.5] over 6 steps: the model sees red's encoding at steps 0-3, blue's after (A1111's rule)."""
    red, blue = pipe.encode_prompt(["a red circle"]), pipe.encode_prompt(["a blue circle"])
    used = []

    def spy(x, sigma, cond):
        used.append("red" if torch.equal(cond[-1:], red) else "blue" if torch.equal(cond[-1:], blue) else "?")
        return pipe.denoiser(x, sigma, cond)

    config = GenerationConfig("a [red:blue:0.5] circle", seed=1, steps=6, cfg_scale=1.0, sampler="Euler")
    _latents(pipe, config, denoiser=spy)
    assert used == ["red"] * 4 + ["blue"] * 2


def test_alternation_and_long_texts_pad_to_one_length(pipe):
    long = ", ".join(["a red circle"] * 30)          # past 75 tokens: two chunks
    cond = pipe.encode_scheduled(f"[{long}|a blue square]", 4)
    assert isinstance(cond, ScheduledCond) and cond.ends == (1, 2, 3, 4)
    assert cond.conds[0].shape == cond.conds[1].shape == (1, 154, cond.conds[0].shape[-1])
    config = GenerationConfig(f"[{long}|a blue square]", seed=1, steps=4)
    assert pipe.generate(config).images[0].size == pipe.size(config)


def test_cli_generates_an_edited_prompt(tiny_model_dir, tmp_path):
    from sdlab.cli.main import main
    from sdlab.io.metadata import read_png_metadata

    assert main(["generate", "a [red:blue:0.5] circle", "--model", str(tiny_model_dir), "--steps", "4",
                 "--seed", "2", "--out", str(tmp_path)]) == 0
    (png,) = tmp_path.glob("*.png")
    assert read_png_metadata(png)["prompt"] == "a [red:blue:0.5] circle"
