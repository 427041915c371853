"""Every sampler against a many-step reference and the oracle, on the shipped model.

The shipped schedule has zero terminal SNR (scaled-linear betas rescaled, Lin et al. 2023; v-prediction;
trailing spacing): its first sigma is infinite in truth, clamped to ~4096, and a sampler that is not
well defined as that sigma grows breaks there (issue 24: Heun drew every background wrong). The bounds
are about samplers agreeing with a reference, not about the model's quality, so that they hold for the
next shipped model on the same kind of schedule. Pixel bounds calibrated on shipped model v2 with 8 "seen"
prompts; the oracle bound on v3 with 32, at the model's recommended guidance scale (CFG 3, what a user gets
by default; at SD's 7.5 v3 is over-guided and the stochastic samplers fall behind Euler, see ORACLE_TOL).

The oracle test runs every sampler at ORACLE_STEPS (the issue's 10, 20 and 25); the 20-step runs are shared
with the pixel test and run by default, the 10- and 25-step ones are slow (about 20 minutes on a loaded
2-core CPU) and run with -m slow.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdlab import GenerationConfig, Pipeline
from sdlab.sampling import SAMPLERS, sampler_names
from sdlab.world.captions import full_caption
from sdlab.world.prompt_sets import prompt_set
from sdlab.world.metrics import accuracy

N_PROMPTS = 32           # "seen" prompts, seeds SEED + i, for the oracle (one image = 0.031)
N_PIXEL = 8              # the first N_PIXEL of them, compared with the reference pixel by pixel
SEED = 1000
REFERENCE = ("Euler", 100)  # 100 steps vs 200 (DDIM): 0.15 mean |pixel difference| on the shipped model
PIXEL_STEPS = (10, 20)
ORACLE_STEPS = (10, 20, 25)
DEFAULT_ORACLE_STEPS = 20   # the others are marked slow
ANCESTRAL = ("Euler a", "Euler a Karras", "DDPM")   # DDPM is the ancestral step at eta 1 (sample_ddpm)
# The SDE samplers, LCM, TCD and Restart (from 20 steps) add fresh noise too, but more of it than one ancestral
# step, so at few steps their image is another sample of the prompt: median differences from the reference
# of 4.6 to 61 measured (DPM++ 3M SDE Karras 61 at 10 steps, LCM 36 at 20): no pixel bound. They are matched
# with diffusers' schedulers on the same noise in test_samplers_new.py, and held to Euler's oracle rate here.
RESAMPLING = ("DPM++ SDE", "DPM++ SDE Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ 3M SDE",
              "DPM++ 3M SDE Karras", "LCM", "Restart", "TCD")

# Pixel difference: the median over the N_PIXEL images of the mean |pixel difference| (0-255) from the
# reference. The median, because on a prompt where the model sits at a decision boundary any solver's
# discretization error may flip the picture (one image at 45 for DPM++ 2M Karras at 10 steps).
# ODE samplers: within ODE_PIXEL_RATIO x Euler's difference at the same steps (Euler has the lowest
# order; every other solver should come as close), or ODE_PIXEL_FLOOR. Measured: Euler 1.92 / 0.77 at
# 10 / 20 steps, the others at most 1.10 x Euler (LMS, 10 steps). Before the fixes: Heun 141 / 130,
# Heun Karras 116 / 3.9, DPM++ 2M Karras 70 / 2.2, LMS Karras 4.5 / 0.8, Euler Karras 3.5 / 0.9.
ODE_PIXEL_RATIO = 1.5
ODE_PIXEL_FLOOR = 1.0
# Ancestral samplers add fresh noise at each step: another sample of the same prompt, not the ODE's.
# Measured: at most 5.4 (Euler a, 20 steps); before: Euler a Karras 30.7 at 10 steps (Karras' ramp from 4096).
ANCESTRAL_PIXEL_TOL = 12.0
# Oracle all-right rate at each of ORACLE_STEPS: within this of Euler's at the same steps (the issue's
# target, not to be loosened; re-calibrate the model, not the bound). Measured on v3 (32 prompts, CFG 3;
# benchmarks/results/sampler_oracle.json, `python benchmarks/sampler_oracle.py --n 32`): Euler 0.969 at 10, 20
# and 25 steps; 20 of 22 samplers within 0.10 at every step count. Over it (KNOWN_SHORT, strict xfail: they
# must start passing when fixed): the SDE multisteps on Karras sigmas, whose long last steps amplify the
# prediction's noise (test_sampling's NOISY_AT_10_STEPS). DPM++ 3M SDE at 10 steps was 0.781 before it took
# the step before the last at second order as diffusers does (lower_order_final): 0.906. At SD's CFG 7.5 v3
# is over-guided and far more fall short (DPM++ 3M SDE 0.56, LCM 0.59, LMS 0.66 at 20 steps against 0.97).
# On 96 prompts (seeds 1000-1095) Euler reads 0.948 at 10 and 20 steps; DPM++ 2M SDE Karras 0.750 at 10 and
# 0.865 at 20 (within 0.10 there: the 32-prompt 0.812 is a low draw), DPM++ 3M SDE Karras 0.073 at 10, 0.875 at
# 20. At 10 Karras steps the failure is the algorithms': without its second-order term DPM++ 2M SDE's step is
# Euler a's in law (0.865 on 96 prompts), and DPM++ 3M SDE with k-diffusion's (A1111's) third-order weight
# reads 0.28 on the 32 (0.16 with ours); the images keep blotches of unresolved noise.
ORACLE_TOL = 0.10
KNOWN_SHORT = {("DPM++ 2M SDE Karras", 10): 0.781, ("DPM++ 2M SDE Karras", 20): 0.812,
               ("DPM++ 3M SDE Karras", 10): 0.156}   # measured rates (issue 21)


@pytest.fixture(scope="module")
def shipped():
    pipe = Pipeline.load()
    scenes = prompt_set("seen", N_PROMPTS)
    return pipe, scenes, pipe.encode_prompt([full_caption(s) for s in scenes])


def generate(shipped, sampler: str, steps: int, n: int) -> list:
    pipe, _, cond = shipped
    config = GenerationConfig("", sampler=sampler, steps=steps, seed=SEED, batch_size=n)
    return pipe.generate(config, cond=cond[:n]).images


@pytest.fixture(scope="module")
def runs(shipped):
    """runs(sampler, steps, n): the first n images (seeds SEED + i) at `steps`, generated once."""
    cache: dict[tuple[str, int], list] = {}

    def get(name: str, steps: int, n: int) -> list:
        if len(cache.get((name, steps), ())) < n:
            cache[name, steps] = generate(shipped, name, steps, n)
        return cache[name, steps][:n]

    return get


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float32) for image in images])


@pytest.fixture(scope="module")
def pixel_diffs(shipped, runs) -> dict[tuple[str, int], float]:
    """(sampler, steps) -> median over images of the mean |pixel difference| from the reference."""
    ref = pixels(generate(shipped, *REFERENCE, N_PIXEL))
    out = {}
    for steps in PIXEL_STEPS:
        for name in sampler_names():
            if name not in RESAMPLING:   # the oracle test reuses the 20-step runs: all its prompts
                images = runs(name, steps, N_PROMPTS if steps == DEFAULT_ORACLE_STEPS else N_PIXEL)
                out[name, steps] = float(np.median(np.abs(pixels(images[:N_PIXEL]) - ref).mean(axis=(1, 2, 3))))
    return out


def test_euler_converges_to_the_reference(pixel_diffs):
    """First order: twice the steps, about half the difference (measured 1.92 -> 0.77)."""
    assert pixel_diffs["Euler", 20] < pixel_diffs["Euler", 10] / 1.5


@pytest.mark.parametrize("name", [n for n in sampler_names() if n not in RESAMPLING])
def test_every_sampler_is_close_to_the_many_step_reference(pixel_diffs, name):
    for steps in PIXEL_STEPS:
        diff = pixel_diffs[name, steps]
        bound = (ANCESTRAL_PIXEL_TOL if name in ANCESTRAL
                 else max(ODE_PIXEL_RATIO * pixel_diffs["Euler", steps], ODE_PIXEL_FLOOR))
        assert diff < bound, f"{name} at {steps} steps: {diff:.2f} from the reference (bound {bound:.2f})"


def _known_short(name: str, steps: int) -> tuple:
    if (name, steps) not in KNOWN_SHORT:
        return ()
    return (pytest.mark.xfail(strict=True, reason=f"{name} at {steps} steps: {KNOWN_SHORT[name, steps]:.3f} all "
                              "right on 32 prompts vs Euler's 0.969 (issue 21)"),)


@pytest.mark.parametrize("name, steps", [
    pytest.param(n, s, marks=(() if s == DEFAULT_ORACLE_STEPS else (pytest.mark.slow,)) + _known_short(n, s))
    for n in sampler_names() for s in ORACLE_STEPS])
def test_every_sampler_reaches_eulers_oracle_rate(shipped, runs, name, steps):
    scenes = shipped[1]
    rate, euler = (accuracy(scenes, runs(n, steps, N_PROMPTS))["all"] for n in (name, "Euler"))
    assert rate >= euler - ORACLE_TOL, f"{name} at {steps} steps: {rate:.3f} of images all right, Euler {euler:.3f}"


def test_the_sampler_lists_name_registered_samplers():
    assert set(ANCESTRAL) | set(RESAMPLING) <= set(SAMPLERS) and not set(ANCESTRAL) & set(RESAMPLING)
    assert {name for name, _ in KNOWN_SHORT} <= set(SAMPLERS) and {s for _, s in KNOWN_SHORT} <= set(ORACLE_STEPS)
