"""Tests for sdlab.sampling and sdlab.guidance.cfg: schedules, the denoiser, samplers, CFG, img2img.

Samplers are checked two ways: against diffusers' own scheduler loops on a tiny random UNet (same
noise, same conditioning) and against the closed-form probability-flow ODE solution for Gaussian
data, where the observed order of convergence must match each method's order.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UNet2DConditionModel,
)

from sdlab.callbacks import CancelToken
from sdlab.errors import Cancelled, ConfigError
from sdlab.guidance import CFGDenoiser, GuidanceCond
from sdlab.sampling import schedule as schedule_module
from sdlab.sampling import (
    SAMPLERS,
    batch_noise,
    Denoiser,
    NoiseSchedule,
    discrete_sigmas,
    get_sampler,
    get_sigmas,
    img2img_start,
    karras_sigmas,
    resolve_sampler,
    sample,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
)

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
EPS_LEADING = dict(SD, prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)  # SD 1.x
V_LINSPACE = dict(SD, prediction_type="v_prediction", timestep_spacing="linspace")
ZSNR_TRAILING = dict(SD, prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True)
EPS_TRAILING = dict(SD, prediction_type="epsilon", timestep_spacing="trailing")
V_TRAILING = dict(SD, prediction_type="v_prediction", timestep_spacing="trailing")
# Relative tolerance against diffusers. Measured worst case: 2.6e-5 (Euler, zero-SNR, 7 steps;
# diffusers' float32 cumprod of alphas near 0 vs our float64), others <= 4e-6. Bound: 1e-4.
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    return model.eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g), torch.randn(2, 7, 32, generator=g)


@torch.no_grad()
def diffusers_loop(scheduler, unet, x, cond, steps, generator=None):
    scheduler.set_timesteps(steps)
    kwargs = {} if generator is None else {"generator": generator}
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t, encoder_hidden_states=cond).sample
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


def assert_close_rel(ours, ref, rel=REL_TOL):
    scale = max(1.0, ref.abs().max().item())
    diff = (ours - ref).abs().max().item()
    assert diff <= rel * scale, f"max diff {diff:.3e} > {rel:.0e} * {scale:.3f}"


# --- schedule --------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [EPS_LEADING, ZSNR_TRAILING, dict(num_train_timesteps=1000, beta_start=1e-4,
                         beta_end=0.02, beta_schedule="linear"), dict(beta_schedule="squaredcos_cap_v2")])
def test_schedule_matches_diffusers(config):
    ours = NoiseSchedule.from_config(config)
    ref = EulerDiscreteScheduler(**config)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-4, atol=0)
    assert ours.alphas_cumprod.dtype == torch.float64
    for steps in (10, 7):
        ref.set_timesteps(steps)
        # atol: diffusers' float32 1 - alphas_cumprod loses digits where sigma is ~1e-2 (cosine: 2.6e-4 rel)
        torch.testing.assert_close(discrete_sigmas(ours, steps), ref.sigmas.double(), rtol=1e-4, atol=1e-5)


def test_zero_snr_clamps_last_alpha_and_sigma_max_is_finite():
    s = NoiseSchedule.from_config(ZSNR_TRAILING)
    assert s.alphas_cumprod[-1].item() == 2.0**-24
    assert math.isfinite(s.sigma_max) and abs(s.sigma_max - 4096.0) < 1.0
    assert torch.all(s.sigmas[1:] > s.sigmas[:-1])


def test_sigma_t_round_trip():
    s = NoiseSchedule.from_config(EPS_LEADING)
    t = torch.tensor([0.0, 0.25, 1.0, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    torch.testing.assert_close(s.sigma_to_t(s.t_to_sigma(t)).double(), t, atol=1e-3, rtol=0)
    torch.testing.assert_close(s.t_to_sigma(torch.tensor([0.0, 999.0])), s.sigmas[[0, -1]])
    assert s.sigma_to_t(torch.tensor(0.0)).item() == 0.0 and s.sigma_to_t(1e6).item() == 999.0


def test_karras_sigmas():
    s = NoiseSchedule.from_config(EPS_LEADING)
    sig = karras_sigmas(s, 12)
    assert len(sig) == 13 and sig[-1] == 0
    assert torch.all(sig[1:] < sig[:-1])
    assert sig[0].item() == pytest.approx(s.sigma_max, rel=1e-12)
    assert sig[-2].item() == pytest.approx(s.sigma_min, rel=1e-12)
    ref = EulerDiscreteScheduler(**dict(SD, timestep_spacing="linspace"), use_karras_sigmas=True)
    ref.set_timesteps(12)
    torch.testing.assert_close(sig, ref.sigmas.double(), rtol=1e-4, atol=0)  # measured 1.3e-5 (float32)


@pytest.mark.parametrize("key,value", [("beta_schedule", "cosine"), ("prediction_type", "sample"),
                                       ("timestep_spacing", "uniform"), ("num_train_timesteps", 0),
                                       ("steps_offset", -1), ("beta_end", 1.5)])
def test_schedule_config_errors_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key):
        NoiseSchedule.from_config(dict(SD, **{key: value}))


def test_schedule_ignores_unrelated_scheduler_keys_and_rejects_bad_steps():
    config = dict(EPS_LEADING, _class_name="PNDMScheduler", clip_sample=False, skip_prk_steps=True)
    s = NoiseSchedule.from_config(config)
    assert s.steps_offset == 1
    with pytest.raises(ConfigError, match="steps"):
        get_sigmas(s, 0)
    with pytest.raises(ConfigError, match="sigma kind"):
        get_sigmas(s, 10, "cosine")


# --- denoiser ----------------------------------------------------------------------------------

class RecordingUNet(torch.nn.Module):
    """A fake UNet returning a constant, recording its inputs; runs in float64."""

    def __init__(self, value=0.5):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value, dtype=torch.float64))
        self.calls = []

    def forward(self, x, t, encoder_hidden_states=None):
        self.calls.append((x, t, encoder_hidden_states))
        return type("Out", (), {"sample": torch.full_like(x, self.value.item())})()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoiser_scaling_timestep_and_conversion(prediction_type):
    schedule = NoiseSchedule.from_config(dict(EPS_LEADING, prediction_type=prediction_type))
    fake = RecordingUNet(0.5)
    x = torch.randn(2, 4, 3, 3)
    sigma = float(schedule.sigmas[400])
    out = Denoiser(fake, schedule)(x, sigma, torch.zeros(1, 7, 32))
    x_in, t, cond = fake.calls[0]
    assert out.dtype == torch.float32 and x_in.dtype == torch.float64 and cond.shape == (2, 7, 32)
    torch.testing.assert_close(x_in, (x / math.sqrt(sigma**2 + 1)).double())
    torch.testing.assert_close(t, torch.full((2,), 400.0), atol=1e-3, rtol=0)
    if prediction_type == "epsilon":
        expected = x - sigma * 0.5
    else:
        expected = x / (sigma**2 + 1) - 0.5 * sigma / math.sqrt(sigma**2 + 1)
    torch.testing.assert_close(out, expected)


def test_denoiser_runs_unet_in_its_dtype(unet, data):
    noise, cond, _ = data
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    x = noise * 3.0
    full = Denoiser(unet, schedule)(x, 3.0, cond)
    half = Denoiser(copy.deepcopy(unet).to(torch.bfloat16), schedule)(x, 3.0, cond)
    assert half.dtype == torch.float32
    assert (half - full).abs().max().item() < 0.05 * 3.0  # bf16 noise, not a wrong conversion


# --- samplers vs diffusers ----------------------------------------------------------------------

@pytest.mark.parametrize("config", [EPS_LEADING, V_LINSPACE, ZSNR_TRAILING],
                         ids=["eps-leading", "v-linspace", "zsnr-trailing"])
@pytest.mark.parametrize("steps", [10, 7])
def test_euler_matches_diffusers(unet, data, config, steps):
    noise, cond, _ = data
    ref_sched = EulerDiscreteScheduler(**config)
    x_T = noise * ref_sched.init_noise_sigma
    ref = diffusers_loop(ref_sched, unet, x_T.clone(), cond, steps)
    schedule = NoiseSchedule.from_config(config)
    sigmas = discrete_sigmas(schedule, steps)
    ours = sample_euler(Denoiser(unet, schedule), x_T.clone(), sigmas, extra_args={"cond": cond})
    assert_close_rel(ours, ref)
    assert (ours - x_T).abs().max() > 1.0  # the loop did move the sample


def dpmpp_2m_scheduler(config):
    return DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2)


@pytest.mark.parametrize("config,sampler,scheduler", [
    (EPS_LEADING, sample_ddim, lambda c: DDIMScheduler(**c, clip_sample=False, set_alpha_to_one=True)),
    (V_TRAILING, sample_ddim, lambda c: DDIMScheduler(**c, clip_sample=False, set_alpha_to_one=True)),
    (EPS_TRAILING, sample_dpmpp_2m, dpmpp_2m_scheduler),
    (ZSNR_TRAILING, sample_dpmpp_2m, dpmpp_2m_scheduler),
], ids=["ddim-eps", "ddim-v", "dpmpp2m-eps", "dpmpp2m-zsnr"])
def test_vp_schedulers_match(unet, data, config, sampler, scheduler):
    """DDIM and DPM-Solver++ in diffusers work on x_vp = x / sqrt(sigma^2 + 1) starting from unit noise;
    the same start in sigma space is noise * sqrt(sigma_0^2 + 1). At sigma = 0 both spaces agree.
    (DDIM is not compared under zero SNR: diffusers' DDIM keeps alpha_T = 0 where we clamp to 2**-24.)"""
    noise, cond, _ = data
    ref = diffusers_loop(scheduler(config), unet, noise.clone(), cond, 10)
    schedule = NoiseSchedule.from_config(config)
    sigmas = discrete_sigmas(schedule, 10)
    x_T = noise * math.sqrt(float(sigmas[0]) ** 2 + 1)
    ours = sampler(Denoiser(unet, schedule), x_T, sigmas, extra_args={"cond": cond})
    assert_close_rel(ours, ref)


def test_lms_matches_diffusers(unet, data):
    noise, cond, _ = data
    ref_sched = LMSDiscreteScheduler(**EPS_LEADING)
    x_T = noise * ref_sched.init_noise_sigma
    ref = diffusers_loop(ref_sched, unet, x_T.clone(), cond, 10)
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    ours = sample_lms(Denoiser(unet, schedule), x_T.clone(), discrete_sigmas(schedule, 10), extra_args={"cond": cond})
    assert_close_rel(ours, ref)  # our last step returns x0; from sigma_min = 0.03 that differs by < 1e-5


@pytest.mark.parametrize("config", [V_LINSPACE, EPS_LEADING], ids=["v-linspace", "eps-leading"])
def test_heun_is_diffusers_heun_with_the_trapezoid_on_the_prediction(unet, data, config):
    """One step s -> s' from the same x: diffusers (Karras et al., Algorithm 1) adds (s - s') / (2 s')
    (D' - D) to the Euler step x_e, we add (s - s') / (2 s) (D' - D); so ours - x_e = (s'/s) (theirs - x_e).
    Over whole runs the two differ by O(h^2): 8e-2 relative at 10 steps, 2e-2 at 25 on this random UNet."""
    noise, cond, _ = data
    ref = HeunDiscreteScheduler(**config)
    ref.set_timesteps(10)
    x = noise * ref.init_noise_sigma
    t0, t1 = ref.timesteps[0], ref.timesteps[1]
    x_e = ref.step(unet(ref.scale_model_input(x, t0), t0, encoder_hidden_states=cond).sample, t0, x).prev_sample
    theirs = ref.step(unet(ref.scale_model_input(x_e, t1), t1, encoder_hidden_states=cond).sample, t1, x_e).prev_sample
    schedule = NoiseSchedule.from_config(config)
    s0, s1 = discrete_sigmas(schedule, 10)[:2].tolist()
    ours = sample_heun(Denoiser(unet, schedule), x.clone(), [s0, s1], extra_args={"cond": cond})
    assert (theirs - x_e).abs().max() > 1e-2  # the correction is not negligible here
    assert_close_rel(ours, x_e + (s1 / s0) * (theirs - x_e))


@pytest.mark.parametrize("sampler,scheduler,rel", [
    (sample_euler, lambda c: EulerDiscreteScheduler(**c, use_karras_sigmas=True), REL_TOL),
    # our last step returns x0 where diffusers' LMS extrapolates to sigma = 0: 1.5e-3 measured
    (sample_lms, lambda c: LMSDiscreteScheduler(**c, use_karras_sigmas=True), 3e-3),
    # diffusers' DPM-Solver rounds the timesteps of Karras sigmas to integers; we interpolate: 1.4e-3 measured
    (sample_dpmpp_2m, lambda c: DPMSolverMultistepScheduler(**c, use_karras_sigmas=True, algorithm_type="dpmsolver++",
                                                            solver_order=2), 3e-3),
], ids=["euler", "lms", "dpmpp2m"])
def test_karras_samplers_match_diffusers(unet, data, sampler, scheduler, rel):
    """On a linspace schedule (diffusers takes the Karras range from the spacing's own sigmas, we from the
    schedule's, as A1111 and k-diffusion do: the same range only there)."""
    noise, cond, _ = data
    ref_sched = scheduler(V_LINSPACE)
    vp = sampler is sample_dpmpp_2m  # diffusers' DPM-Solver starts from unit noise in the VP space
    ref = diffusers_loop(ref_sched, unet, noise.clone() if vp else noise * ref_sched.init_noise_sigma, cond, 20)
    schedule = NoiseSchedule.from_config(V_LINSPACE)
    sigmas = karras_sigmas(schedule, 20)
    x_T = noise * (math.sqrt(float(sigmas[0]) ** 2 + 1) if vp else float(sigmas[0]))
    assert_close_rel(sampler(Denoiser(unet, schedule), x_T, sigmas, extra_args={"cond": cond}), ref, rel)


def test_euler_ancestral_matches_diffusers_and_seeds(unet, data):
    noise, cond, _ = data
    ref_sched = EulerAncestralDiscreteScheduler(**EPS_LEADING)
    x_T = noise * ref_sched.init_noise_sigma
    ref = diffusers_loop(ref_sched, unet, x_T.clone(), cond, 10, generator=torch.Generator().manual_seed(3))
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    den, sigmas = Denoiser(unet, schedule), discrete_sigmas(schedule, 10)

    def run(seed):
        return sample_euler_ancestral(den, x_T.clone(), sigmas, extra_args={"cond": cond},
                                      generator=torch.Generator().manual_seed(seed))

    first = run(3)
    assert_close_rel(first, ref)
    assert torch.equal(first, run(3))
    assert (first - run(4)).abs().max().item() > 0.1


# --- samplers vs the exact ODE solution -------------------------------------------------------

S2 = 0.25  # data ~ N(0, S2): D(x, sigma) = x * S2 / (S2 + sigma^2), x(sigma) ∝ sqrt(S2 + sigma^2)


def gaussian_denoiser(x, sigma, cond=None):
    return x * S2 / (S2 + sigma.reshape(-1, 1) ** 2)


def ode_error(sampler, steps):
    sigmas = karras_sigmas(NoiseSchedule.from_config(SD), steps)[:-1]  # stop at sigma_min: pure ODE
    x = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    exact = x * math.sqrt((S2 + float(sigmas[-1]) ** 2) / (S2 + float(sigmas[0]) ** 2))
    return ((sampler(gaussian_denoiser, x, sigmas) - exact).abs().max() / exact.abs().max()).item()


@pytest.mark.parametrize("sampler,lo,hi", [
    (sample_euler, 1.8, 2.2), (sample_ddim, 1.8, 2.2),       # first order: error halves
    (sample_heun, 3.5, 4.6), (sample_dpmpp_2m, 3.5, 4.6),    # second order: error / 4
    (sample_lms, 10.0, 17.0),                                # fourth order (approached from below)
])
def test_convergence_order_on_gaussian_data(sampler, lo, hi):
    """Measured error ratios 40 -> 80 steps: Euler 2.00, Heun 4.17, DPM++ 2M 4.22, LMS 13.5."""
    e40, e80 = ode_error(sampler, 40), ode_error(sampler, 80)
    assert lo < e40 / e80 < hi
    assert ode_error(sampler, 10) < 0.2


# --- zero terminal SNR: the first sigma is infinite in truth (clamped to ~4096) -----------------

MEAN = torch.linspace(-1, 1, 64, dtype=torch.float64)
# Noise gain: rms change of the result / rms of independent noise added to every prediction, on the
# zero-SNR trailing and Karras sigmas at 10, 20, 50 steps. Measured: at most 1.90 (DPM++ 2M Karras,
# 10 steps); before the fixes LMS 3.9 / 6.7 / 10.4 (a cubic extrapolated to sigma = 0), Heun 3.8,
# Heun Karras 8.3 (Algorithm 1's trapezoid in sigma). Bound 2.5.
MAX_NOISE_GAIN = 2.5


def shifted_gaussian_denoiser(x, sigma, cond=None):
    """Data ~ N(MEAN, S2) per element, so the prediction changes along the way (not only its noise)."""
    return MEAN + (x - MEAN) * S2 / (S2 + sigma.reshape(-1, 1) ** 2)


def zsnr_noise(rows=8):
    return torch.randn(rows, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_zero_snr_sampling_has_a_limit_as_the_first_sigma_grows(name):
    """sigma_max stands in for infinity, so the result must not depend on it. Measured with the
    first sigma x16 at 10 steps: Algorithm 1's Heun moved by 1.7; every sampler now by < 2e-4."""
    schedule, spec = NoiseSchedule.from_config(ZSNR_TRAILING), get_sampler(name)
    outs = []
    for scale in (1, 16):
        sigmas = get_sigmas(schedule, 10, spec.sigma_kind).clone()
        sigmas[0] *= scale
        outs.append(spec.bind(schedule)(shifted_gaussian_denoiser, zsnr_noise() * float(sigmas[0]), sigmas,
                                        generator=torch.Generator().manual_seed(1)))
    assert (outs[0] - outs[1]).abs().max().item() < 1e-3


# Known: the multistep SDE samplers on Karras sigmas at 10 steps amplify prediction noise past the bound
# (measured 2.51 for DPM++ 2M SDE Karras, 4.17 for DPM++ 3M SDE Karras), in line with their low 10-step
# oracle rates (benchmarks/sampler_oracle.py). The 2M one is the algorithm's, not a bug: on SD 1.5's
# epsilon schedule with Karras sigmas, diffusers' DPMSolverMultistepScheduler (sde-dpmsolver++, order 2)
# has the same gain to two decimals (2.51 at 10 steps, 2.29 at 20). The 3M one is ours at 10 steps (3.77
# there; diffusers 2.57 with its different second-difference weight, see sde.third_order_terms). Strict,
# so a change shows.
NOISY_AT_10_STEPS = ("DPM++ 2M SDE Karras", "DPM++ 3M SDE Karras")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="amplifies noise at 10 "
                                                                           "Karras steps (known, see above)"))
                                  if n in NOISY_AT_10_STEPS else n for n in sorted(SAMPLERS)])
def test_samplers_do_not_amplify_prediction_noise(name):
    schedule, spec = NoiseSchedule.from_config(ZSNR_TRAILING), get_sampler(name)

    def noisy(eps):
        g = torch.Generator().manual_seed(5)
        return lambda x, sigma: shifted_gaussian_denoiser(x, sigma) + eps * torch.randn(x.shape, generator=g,
                                                                                          dtype=x.dtype)

    for steps in (10, 20, 50):
        sigmas = get_sigmas(schedule, steps, spec.sigma_kind)
        x_T = zsnr_noise(16) * float(sigmas[0])
        clean, moved = (spec.bind(schedule)(noisy(eps), x_T, sigmas, generator=torch.Generator().manual_seed(1))
                        for eps in (0.0, 1e-3))
        gain = (moved - clean).pow(2).mean().sqrt().item() / 1e-3
        assert gain < MAX_NOISE_GAIN, f"{steps} steps: noise gain {gain:.2f}"


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_last_step_returns_the_denoised_prediction(name):
    """The ODE derivative has no value at sigma = 0: every sampler ends on x0 = D(x, sigma_last)."""
    events = []
    out = sample(name, shifted_gaussian_denoiser, zsnr_noise(), 8, NoiseSchedule.from_config(ZSNR_TRAILING),
                 callback=events.append, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, events[-1].denoised)


def test_zero_snr_karras_starts_at_snr_zero_then_ramps_from_the_trailing_first_step(monkeypatch):
    s = NoiseSchedule.from_config(ZSNR_TRAILING)
    sig, trailing = karras_sigmas(s, 10), discrete_sigmas(s, 10)
    assert len(sig) == 11 and sig[0].item() == s.sigma_max and sig[-2].item() == pytest.approx(s.sigma_min)
    assert sig[1].item() == pytest.approx(trailing[1].item(), rel=1e-9)  # t = 899: sigma 18.1, not 2106
    torch.testing.assert_close(sig[1:], karras_sigmas(s, 9, sigma_max=float(trailing[1])))
    assert karras_sigmas(s, 1).tolist() == [s.sigma_max, 0.0]
    monkeypatch.setattr(schedule_module, "ZERO_SNR_ALPHA_CUMPROD", 2.0**-32)  # another stand-in for infinity
    wider = NoiseSchedule.from_config(ZSNR_TRAILING)
    assert wider.sigma_max > 16 * s.sigma_max
    torch.testing.assert_close(karras_sigmas(wider, 10)[1:], sig[1:])  # it does not reach the ramp


def test_ddim_equals_euler_in_sigma_form():
    sigmas = karras_sigmas(NoiseSchedule.from_config(SD), 15)
    x = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * float(sigmas[0])
    torch.testing.assert_close(sample_ddim(gaussian_denoiser, x, sigmas), sample_euler(gaussian_denoiser, x, sigmas))


def test_per_row_generators_reproduce_each_image_alone():
    """A list of generators (seed + i per image) makes row i independent of the batch around it."""
    sigmas = karras_sigmas(NoiseSchedule.from_config(SD), 8)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    noise = batch_noise((4, 3, 3), gens(5, 6))
    assert noise.shape == (2, 4, 3, 3) and noise.dtype == torch.float32
    assert torch.equal(noise[1], torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(6)))

    def run(x, generators):
        return sample_euler_ancestral(lambda x, s: gaussian_denoiser(x.flatten(1), s).view_as(x), x,
                                      sigmas, generator=generators)

    both = run(noise * float(sigmas[0]), gens(5, 6))
    alone = run(noise[1:] * float(sigmas[0]), gens(6))
    torch.testing.assert_close(both[1:], alone)
    assert (both[0] - both[1]).abs().max() > 0.1
    with pytest.raises(ConfigError, match="generator"):
        run(noise * float(sigmas[0]), gens(5))


# --- CFG -------------------------------------------------------------------------------------

class CountingUNet(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.batches = inner, []

    def forward(self, x, t, encoder_hidden_states=None):
        self.batches.append(x.shape[0])
        return self.inner(x, t, encoder_hidden_states=encoder_hidden_states)


def test_cfg_scale_one_is_the_plain_denoiser(unet, data):
    noise, cond, uncond = data
    den = Denoiser(unet, NoiseSchedule.from_config(EPS_LEADING))
    x = noise * 5.0
    assert torch.equal(CFGDenoiser(den, 1.0)(x, 5.0, GuidanceCond(cond=cond, uncond=uncond)), den(x, 5.0, cond))


def test_cfg_one_batched_call_per_step_and_the_right_mix(unet, data):
    noise, cond, uncond = data
    counting = CountingUNet(unet)
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    den = Denoiser(counting, schedule)
    cfg = CFGDenoiser(den, 7.5)
    sample_euler(cfg, noise * 10.0, discrete_sigmas(schedule, 6), extra_args={"cond": {"cond": cond, "uncond": uncond}})
    assert counting.batches == [4] * 6
    x = noise * 5.0
    guided = cfg(x, 5.0, GuidanceCond(cond=cond, uncond=uncond[:1]))  # a batch-1 uncond broadcasts
    u, c = den(x, 5.0, uncond[:1].expand(2, -1, -1)), den(x, 5.0, cond)
    torch.testing.assert_close(guided, u + 7.5 * (c - u), atol=1e-4, rtol=1e-4)
    assert (guided - c).abs().max() > 0.1


def test_cfg_guidance_rescale(unet, data):
    noise, cond, uncond = data
    den = Denoiser(unet, NoiseSchedule.from_config(EPS_LEADING))
    x, gc = noise * 2.0, GuidanceCond(cond=cond, uncond=uncond)
    plain, full = CFGDenoiser(den, 9.0)(x, 2.0, gc), CFGDenoiser(den, 9.0, guidance_rescale=1.0)(x, 2.0, gc)
    half = CFGDenoiser(den, 9.0, guidance_rescale=0.5)(x, 2.0, gc)
    c_std = den(x, 2.0, cond).std(dim=(1, 2, 3))
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), c_std, rtol=1e-3, atol=1e-5)
    assert torch.all(plain.std(dim=(1, 2, 3)) > 1.05 * c_std)  # measured 1.29x and 1.12x
    torch.testing.assert_close(half, (plain + full) / 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,field", [({"scale": "7"}, "scale"), ({"scale": -1.0}, "scale"),
                                          ({"scale": float("nan")}, "scale"), ({"scale": True}, "scale"),
                                          ({"scale": 7.0, "guidance_rescale": 1.5}, "guidance_rescale")])
def test_cfg_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        CFGDenoiser(gaussian_denoiser, **kwargs)


def test_cfg_needs_uncond_above_scale_one():
    with pytest.raises(ConfigError, match="uncond"):
        CFGDenoiser(gaussian_denoiser, 5.0)(torch.zeros(1, 4), 1.0, {"cond": torch.zeros(1, 3)})


# --- registry, callbacks, cancel -------------------------------------------------------------

def test_registry_names_and_unknown_sampler():
    for name in ("Euler", "Euler a", "Heun", "DDIM", "LMS", "DPM++ 2M", "DPM++ 2M Karras", "LMS Karras",
                 "Heun Karras", "Euler Karras", "Euler a Karras"):
        assert name in SAMPLERS
    spec = get_sampler("  dpm++ 2m   KARRAS ")
    assert spec.fn is sample_dpmpp_2m and spec.sigma_kind == "karras"
    fn, kind = get_sampler("euler a")
    assert fn is sample_euler_ancestral and kind == "default"
    with pytest.raises(ConfigError) as err:
        get_sampler("Euler b")
    assert "unknown sampler 'Euler b'" in str(err.value)
    assert all(name in str(err.value) for name in SAMPLERS)


def test_sample_convenience_matches_manual_run():
    schedule = NoiseSchedule.from_config(SD)
    noise = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = sample("LMS Karras", gaussian_denoiser, noise, 9, schedule)
    sigmas = karras_sigmas(schedule, 9)
    torch.testing.assert_close(ours, sample_lms(gaussian_denoiser, noise * float(sigmas[0]), sigmas))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_events(name):
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    events = []
    noise = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample(name, gaussian_denoiser, noise, 6, schedule, callback=events.append,
                 generator=torch.Generator().manual_seed(1))
    sigmas = get_sigmas(schedule, 6, resolve_sampler(name)[1])      # LCM's Automatic: its own (lcm) schedule
    assert [e.step for e in events] == list(range(6)) and all(e.total == 6 for e in events)
    assert [e.sigma for e in events] == pytest.approx(sigmas[:-1].tolist())
    assert events[-1].x is out and events[0].denoised.shape == out.shape


def test_cancel_token_stops_the_loop():
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    token, events = CancelToken(), []

    def cb(event):
        events.append(event)
        if event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        sample("DPM++ 2M", gaussian_denoiser, torch.ones(1, 4, dtype=torch.float64), 10, schedule,
               callback=cb, cancel=token)
    assert len(events) == 3


# --- img2img ---------------------------------------------------------------------------------

def test_img2img_strength_edges():
    sigmas = discrete_sigmas(NoiseSchedule.from_config(EPS_LEADING), 10)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    tail, start = img2img_start(x0, 0.0, sigmas, generator=torch.Generator().manual_seed(1))
    assert tail.tolist() == [0.0] and start is x0
    assert torch.equal(sample_euler(gaussian_denoiser, start, tail), x0)
    tail, start = img2img_start(x0, 1.0, sigmas, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tail, sigmas)
    torch.testing.assert_close(start, x0 + noise * float(sigmas[0]))
    tail, start = img2img_start(x0, 0.55, sigmas, generator=torch.Generator().manual_seed(1))
    assert len(tail) - 1 == 5 and tail[0] == sigmas[5]  # int(10 * 0.55) steps, as diffusers
    torch.testing.assert_close(start, x0 + noise * float(sigmas[5]))


@pytest.mark.parametrize("strength", [1.5, -0.1, "0.5", True, float("nan")])
def test_img2img_invalid_strength(strength):
    sigmas = discrete_sigmas(NoiseSchedule.from_config(EPS_LEADING), 10)
    with pytest.raises(ConfigError, match="strength"):
        img2img_start(torch.zeros(1, 4, 2, 2), strength, sigmas)
