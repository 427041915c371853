"""The samplers and schedules under AUTOMATIC1111's names that came after Euler, Heun, LMS, DDIM and
DPM++ 2M: DPM++ SDE, DPM++ 2M SDE, DPM++ 3M SDE, UniPC, DDPM, LCM, Restart; the Karras, exponential,
polyexponential, SGM uniform and Align Your Steps schedules.

Where diffusers has the scheduler, ours runs next to it on a tiny random UNet with the same noise (the
same generator, or the same sequence of noise handed to both) and must match within REL_TOL of
tests/test_sampling.py. Schedules are checked against k-diffusion's formulas (written out below, as
A1111 calls them) and A1111's Align Your Steps table. The stochastic samplers are checked for seed
reproducibility and batch invariance on an analytic denoiser (Gaussian data, D(x, sigma) in closed form).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)

from sdlab import GenerationConfig
from sdlab.errors import ConfigError
from sdlab.sampling import (
    SAMPLERS,
    Denoiser,
    NoiseSchedule,
    discrete_sigmas,
    get_sampler,
    get_sigmas,
    resolve_sampler,
    sample,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
    sample_heun,
    sample_lcm,
    sample_ddpm,
    sample_restart,
    sample_tcd,
    sample_unipc,
)
from sdlab.sampling.brownian import BrownianNoise, vp_noise_level
from sdlab.sampling.restart import restart_plan
from sdlab.sampling.sigmas import AYS_SD15
from test_sampling import (  # the tiny UNet, its data and the diffusers loop are shared
    EPS_LEADING, EPS_TRAILING, REL_TOL, SD, V_LINSPACE, V_TRAILING, ZSNR_TRAILING, assert_close_rel, data,
    diffusers_loop, gaussian_denoiser, ode_error, unet,
)

CONFIG_IDS = {id(EPS_LEADING): "eps-leading", id(EPS_TRAILING): "eps-trailing", id(V_LINSPACE): "v-linspace",
              id(V_TRAILING): "v-trailing", id(ZSNR_TRAILING): "zsnr-trailing"}


def config_id(config):
    return CONFIG_IDS[id(config)]


class NoiseSequence:
    """Unit noise drawn in call order from one seed, whatever (sigma, sigma') it is asked for: handed to
    diffusers' DPMSolverSDEScheduler as its noise sampler and to ours as `noise`, both get the same noise."""

    def __init__(self, shape, seed):
        self.shape, self.generator = tuple(shape), torch.Generator().manual_seed(seed)

    def __call__(self, sigma, sigma_next):
        return torch.randn(self.shape, generator=self.generator)


def sigmas_at(schedule, timesteps):
    """Our sigmas at a diffusers scheduler's timesteps, then 0."""
    return torch.cat([schedule.t_to_sigma(timesteps.double()), torch.zeros(1, dtype=torch.float64)])


def vp_start(noise, sigmas):
    """diffusers' DPM-Solver family starts from unit noise in x / sqrt(sigma^2 + 1); ours in sigma form."""
    return noise * math.sqrt(float(sigmas[0]) ** 2 + 1)


# --- against diffusers' schedulers ----------------------------------------------------------------

@pytest.mark.parametrize("config", [EPS_TRAILING, ZSNR_TRAILING], ids=config_id)
def test_dpmpp_2m_sde_matches_diffusers_with_the_same_noise(unet, data, config):
    """DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2) draws unit noise from
    its generator at every step; ours draws the same numbers in the same order through `noise`."""
    assert_matches_sde_dpmsolver(unet, data, config, sample_dpmpp_2m_sde, steps=10, seed=7, solver_order=2)


def assert_matches_sde_dpmsolver(unet, data, config, sampler, steps: int, seed: int, **scheduler):
    """A whole run of `sampler` is DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", **scheduler)'s
    on the model's spacing, the same unit noise drawn in the same order."""
    noise, cond, _ = data
    ref = diffusers_loop(DPMSolverMultistepScheduler(**config, algorithm_type="sde-dpmsolver++", **scheduler),
                         unet, noise.clone(), cond, steps, generator=torch.Generator().manual_seed(seed))
    schedule = NoiseSchedule.from_config(config)
    sigmas = discrete_sigmas(schedule, steps)
    ours = sampler(Denoiser(unet, schedule), vp_start(noise, sigmas), sigmas, extra_args={"cond": cond},
                   noise=NoiseSequence(noise.shape, seed))
    assert_close_rel(ours, ref)


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m(unet, data):
    """eta = 0 leaves the probability-flow ODE: DPM-Solver++(2M) exactly."""
    noise, cond, _ = data
    schedule = NoiseSchedule.from_config(ZSNR_TRAILING)
    sigmas, den = get_sigmas(schedule, 12, "karras"), Denoiser(unet, schedule)
    x = noise * float(sigmas[0])
    ode = sample_dpmpp_2m(den, x, sigmas, extra_args={"cond": cond})
    torch.testing.assert_close(sample_dpmpp_2m_sde(den, x, sigmas, extra_args={"cond": cond}, eta=0.0), ode)


@pytest.mark.parametrize("config", [EPS_LEADING, V_TRAILING], ids=config_id)
def test_dpmpp_3m_sde_first_two_steps_match_diffusers(unet, data, config):
    """The 3M's first step is first order and its second second order with phi_2 (k-diffusion's), as
    diffusers' sde-dpmsolver++ of order 3 with solver_type "heun". From the third step on they part on purpose: see sdlab.sampling.sde.third_order_terms (and
    test_deterministic_parts_converge_at_their_order)."""
    noise, cond, _ = data
    ref_sched = DPMSolverMultistepScheduler(**config, algorithm_type="sde-dpmsolver++", solver_order=3,
                                            solver_type="heun")
    ref_sched.set_timesteps(10)
    x_vp, g = noise.clone(), torch.Generator().manual_seed(3)
    for t in ref_sched.timesteps[:2]:
        out = unet(ref_sched.scale_model_input(x_vp, t), t, encoder_hidden_states=cond).sample
        x_vp = ref_sched.step(out, t, x_vp, generator=g).prev_sample
    schedule = NoiseSchedule.from_config(config)
    sigmas = sigmas_at(schedule, ref_sched.timesteps)   # its leading spacing is not Euler's (n of n + 1 points)
    ours = sample_dpmpp_3m_sde(Denoiser(unet, schedule), vp_start(noise, sigmas), sigmas[:3],
                               extra_args={"cond": cond}, noise=NoiseSequence(noise.shape, 3))
    assert_close_rel(ours, x_vp * math.sqrt(float(sigmas[2]) ** 2 + 1))


@pytest.mark.parametrize("config", [EPS_TRAILING, ZSNR_TRAILING], ids=config_id)
def test_dpmpp_3m_sde_lowers_the_order_before_the_last_step_as_diffusers(unet, data, config):
    """Below 15 steps diffusers' lower_order_final (its default) takes the step before the last at second
    order: a whole 4-step run (orders 1, 2, 2, then the prediction) is diffusers' on the same noise."""
    assert_matches_sde_dpmsolver(unet, data, config, sample_dpmpp_3m_sde, steps=4, seed=5, solver_order=3,
                                 solver_type="heun")


@pytest.mark.parametrize("config", [EPS_LEADING, V_TRAILING], ids=config_id)
def test_dpmpp_sde_matches_diffusers_with_the_same_noise(unet, data, config):
    """DPMSolverSDEScheduler: a midpoint step in -log(sigma) with ancestral noise on each half; its Brownian
    tree is swapped for a NoiseSequence, ours gets the same sequence (each step asks for noise twice)."""
    noise, cond, _ = data
    ref_sched = DPMSolverSDEScheduler(**config)
    ref_sched.set_timesteps(8)
    ref_sched.noise_sampler = NoiseSequence(noise.shape, 11)
    x_T = noise * ref_sched.init_noise_sigma
    x = x_T.clone()
    with torch.no_grad():
        for t in ref_sched.timesteps:
            out = unet(ref_sched.scale_model_input(x, t), t, encoder_hidden_states=cond).sample
            x = ref_sched.step(out, t, x).prev_sample
    schedule = NoiseSchedule.from_config(config)
    sigmas = discrete_sigmas(schedule, 8)
    steps = torch.cat([ref_sched.sigmas[:1], ref_sched.sigmas[1::2]])   # its sigmas are [s0, s1, s1, s2, s2, ...]
    torch.testing.assert_close(sigmas.float(), steps.float().cpu(), rtol=1e-5, atol=0)
    ours = sample_dpmpp_sde(Denoiser(unet, schedule), x_T.clone(), sigmas, extra_args={"cond": cond},
                            noise=NoiseSequence(noise.shape, 11))
    assert_close_rel(ours, x)


@pytest.mark.parametrize("config", [EPS_TRAILING, V_LINSPACE, ZSNR_TRAILING], ids=config_id)
@pytest.mark.parametrize("steps", [10, 5])
def test_unipc_matches_diffusers(unet, data, config, steps):
    """UniPCMultistepScheduler's defaults: bh2, order 2, data prediction, the corrector on every step but
    the first, lower order on the last. On its own timesteps: the DPM-Solver family's linspace takes n of
    n + 1 rounded points (Euler's, sdlab's "linspace", n points unrounded)."""
    noise, cond, _ = data
    ref_sched = UniPCMultistepScheduler(**config)
    ref = diffusers_loop(ref_sched, unet, noise.clone(), cond, steps)
    schedule = NoiseSchedule.from_config(config)
    sigmas = sigmas_at(schedule, ref_sched.timesteps)
    ours = sample_unipc(Denoiser(unet, schedule), vp_start(noise, sigmas), sigmas, extra_args={"cond": cond})
    assert_close_rel(ours, ref)


@pytest.mark.parametrize("config", [EPS_LEADING, V_TRAILING], ids=config_id)
def test_ddpm_matches_diffusers_with_the_same_generator(unet, data, config):
    """DDPMScheduler (fixed_small variance, no clipping) draws its noise from the generator each step, as
    ours does (none on the last step, where its variance is 0 anyway)."""
    noise, cond, _ = data
    ref = diffusers_loop(DDPMScheduler(**config, clip_sample=False), unet, noise.clone(), cond, 10,
                         generator=torch.Generator().manual_seed(5))
    schedule = NoiseSchedule.from_config(config)
    sigmas = discrete_sigmas(schedule, 10)
    ours = sample_ddpm(Denoiser(unet, schedule), vp_start(noise, sigmas), sigmas, extra_args={"cond": cond},
                       generator=torch.Generator().manual_seed(5))
    assert_close_rel(ours, ref)


def test_lcm_matches_diffusers_multistep_consistency_sampling(unet, data):
    """LCMScheduler's timesteps (4 of its 50 original ones) and noise from the same generator. Its boundary
    condition (c_skip, c_out) belongs to a distilled model's denoiser, not the sampler: timestep_scaling 1e6
    makes it the identity (c_skip < 1e-12) so the two loops compare."""
    noise, cond, _ = data
    ref_sched = LCMScheduler(**EPS_LEADING, timestep_scaling=1e6)
    ref = diffusers_loop(ref_sched, unet, noise.clone(), cond, 4, generator=torch.Generator().manual_seed(9))
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    sigmas = sigmas_at(schedule, ref_sched.timesteps)
    ours = sample_lcm(Denoiser(unet, schedule), vp_start(noise, sigmas), sigmas, extra_args={"cond": cond},
                      generator=torch.Generator().manual_seed(9))
    assert_close_rel(ours, ref)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_tcd_matches_diffusers_step_by_step(unet, data, gamma):
    """TCDScheduler at eta = gamma, 4 of its 50 original timesteps, noise from the same generator: every
    step's sample (ours in sigma form, compared in diffusers' x / sqrt(sigma^2 + 1)). On the last step
    diffusers lands on timestep 0's noise level (x0 plus sqrt(1 - alpha_bar_0) eps); ours ends on x0,
    as every sdlab sampler does, so the last step is compared as the x0 both predict."""
    noise, cond, _ = data
    ref_sched = TCDScheduler(**EPS_LEADING)
    ref_sched.set_timesteps(4)
    generator, x, ref = torch.Generator().manual_seed(9), noise.clone(), []
    for t in ref_sched.timesteps:
        out = unet(ref_sched.scale_model_input(x, t), t, encoder_hidden_states=cond).sample
        step = ref_sched.step(out, t, x, eta=gamma, generator=generator)
        x = step.prev_sample
        ref.append(x)
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    sigmas = sigmas_at(schedule, ref_sched.timesteps)
    seen = []
    ours = sample_tcd(Denoiser(unet, schedule), vp_start(noise, sigmas), sigmas, extra_args={"cond": cond},
                      generator=torch.Generator().manual_seed(9), schedule=schedule, gamma=gamma,
                      callback=lambda e: seen.append((e.x, e.denoised)))
    for i in range(3):
        assert_close_rel(seen[i][0] / math.sqrt(float(sigmas[i + 1]) ** 2 + 1), ref[i])
    a0 = ref_sched.alphas_cumprod[0].double()
    x_last = ref[2] * math.sqrt(float(sigmas[3]) ** 2 + 1)          # the last step's input, sigma form
    eps = (x_last - ours) / float(sigmas[3])
    assert_close_rel(a0.sqrt() * ours + (1 - a0).sqrt() * eps, ref[3])
    assert torch.equal(ours, seen[-1][1])


def test_tcd_runs_by_name_on_lcm_timesteps_and_refuses_a_bad_gamma():
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    assert resolve_sampler("TCD")[1] == "lcm"
    x = torch.randn(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = sample("TCD", gaussian_denoiser, x, 4, schedule, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()
    with pytest.raises(ConfigError, match="gamma must be in"):
        sample_tcd(gaussian_denoiser, x, get_sigmas(schedule, 4, "lcm"), schedule=schedule, gamma=1.5)


# --- sigma schedules: k-diffusion's formulas, diffusers' options, A1111's AYS table ------------------

def kdiff_karras(n, sigma_min, sigma_max, rho=7.0):
    """k_diffusion.sampling.get_sigmas_karras."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho, torch.zeros(1, dtype=torch.float64)])


def kdiff_exponential(n, sigma_min, sigma_max):
    """k_diffusion.sampling.get_sigmas_exponential."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


def kdiff_polyexponential(n, sigma_min, sigma_max, rho=1.0):
    """k_diffusion.sampling.get_sigmas_polyexponential (A1111's default rho 1)."""
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])


# A1111's modules/sd_schedulers.py: the SD 1.5 table rounded to 3 decimals, log-linearly interpolated
# (in ascending order) to n values unless n is the table's length, then 0.
A1111_AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]


def a1111_ays(n):
    sigmas = A1111_AYS_SD15
    if n != len(sigmas):
        xs, ys = np.linspace(0, 1, len(sigmas)), np.log(sigmas[::-1])
        sigmas = list(np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1])
    return torch.tensor(sigmas + [0.0], dtype=torch.float64)


def a1111_sgm_uniform(schedule, n):
    """A1111's (and ComfyUI's) sgm_uniform: n timesteps evenly from t_max down to 0, the last left out."""
    t = torch.linspace(schedule.num_train_timesteps - 1, 0, n + 1, dtype=torch.float64)[:-1]
    return torch.cat([schedule.t_to_sigma(t), torch.zeros(1, dtype=torch.float64)])


SCHEDULES = [EPS_LEADING, V_LINSPACE]


@pytest.mark.parametrize("config", SCHEDULES, ids=config_id)
@pytest.mark.parametrize("steps", [1, 10, 25])
def test_ramps_are_k_diffusions_formulas_over_the_models_sigma_range(config, steps):
    schedule = NoiseSchedule.from_config(config)
    lo, hi = schedule.sigma_min, schedule.sigma_max
    for kind, ref in (("karras", kdiff_karras), ("exponential", kdiff_exponential),
                      ("polyexponential", kdiff_polyexponential)):
        if steps == 1 and kind == "karras":
            continue   # k-diffusion's Karras ramp of one value is sigma_max
        torch.testing.assert_close(get_sigmas(schedule, steps, kind), ref(steps, lo, hi), rtol=1e-12, atol=0)
    # polyexponential with A1111's rho 1 is exponential
    torch.testing.assert_close(get_sigmas(schedule, steps, "polyexponential"), get_sigmas(schedule, steps, "exponential"))


@pytest.mark.parametrize("option,kind", [("use_karras_sigmas", "karras"), ("use_exponential_sigmas", "exponential")])
@pytest.mark.parametrize("steps", [10, 30])
def test_ramps_match_diffusers_euler_options(option, kind, steps):
    """On a linspace schedule, where diffusers' range (the spacing's own first and last sigma) is the
    schedule's; diffusers computes in float32 (1.3e-5 relative measured)."""
    ref = EulerDiscreteScheduler(**V_LINSPACE, **{option: True})
    ref.set_timesteps(steps)
    ours = get_sigmas(NoiseSchedule.from_config(V_LINSPACE), steps, kind)
    torch.testing.assert_close(ours.float(), ref.sigmas.float(), rtol=5e-5, atol=0)


@pytest.mark.parametrize("steps", [4, 10, 11, 20, 32])
def test_align_your_steps_is_a1111s_table(steps):
    """Ours is NVIDIA's table at full precision (as ComfyUI ships it), A1111's rounds to 3 decimals:
    equal within that rounding (0.029 vs 0.02917: 0.6 %, the largest relative part)."""
    ours = get_sigmas(NoiseSchedule.from_config(EPS_LEADING), steps, "align_your_steps")
    assert len(ours) == steps + 1 and ours[-1] == 0
    torch.testing.assert_close(ours, a1111_ays(steps), rtol=7e-3, atol=0)
    if steps == len(AYS_SD15):   # the table itself, not interpolated
        torch.testing.assert_close(ours[:-1], torch.tensor(AYS_SD15, dtype=torch.float64))


def test_uniform_schedules_are_a1111s():
    """Uniform: k-diffusion's get_sigmas(n), t evenly from t_max to 0. SGM Uniform here is the model's
    trailing spacing (t = round(T - k T / n) - 1, as diffusers' and SDXL-Turbo's), A1111's is t evenly from
    t_max to 0 over n + 1 points, the last left out: the same first sigma, the others at most a timestep
    apart (at most 1.3 % in sigma at 25 steps, the last sigma above 0, measured)."""
    schedule = NoiseSchedule.from_config(EPS_LEADING)
    for steps in (10, 25):
        t = torch.linspace(999, 0, steps, dtype=torch.float64)
        uniform = torch.cat([schedule.t_to_sigma(t), torch.zeros(1, dtype=torch.float64)])
        torch.testing.assert_close(get_sigmas(schedule, steps, "uniform"), uniform)
        sgm, a1111 = get_sigmas(schedule, steps, "sgm_uniform"), a1111_sgm_uniform(schedule, steps)
        assert sgm[0] == a1111[0]
        torch.testing.assert_close(sgm, a1111, rtol=0.02, atol=0)


# --- orders of the deterministic parts (Gaussian data, closed-form ODE solution) -----------------

@pytest.mark.parametrize("sampler,lo,hi", [
    (sample_unipc, 7.0, 13.0),                                            # UniPC-2 with its corrector: order 3
    (functools.partial(sample_dpmpp_sde, eta=0.0), 3.5, 4.6),             # midpoint: order 2
    (functools.partial(sample_dpmpp_2m_sde, eta=0.0), 3.5, 4.6),          # order 2
    (functools.partial(sample_dpmpp_3m_sde, eta=0.0), 6.5, 10.0),         # order 3
], ids=["unipc", "dpmpp-sde", "dpmpp-2m-sde", "dpmpp-3m-sde"])
def test_deterministic_parts_converge_at_their_order(sampler, lo, hi):
    """Error ratios 40 -> 80 steps at eta 0, measured: UniPC 10.4, DPM++ SDE 4.04, 2M SDE 4.22, 3M SDE 8.08;
    3M SDE with k-diffusion's (and DPM-Solver's) weight of the second difference, half the exact one: 3.58."""
    e40, e80 = ode_error(sampler, 40), ode_error(sampler, 80)
    assert lo < e40 / e80 < hi
    assert ode_error(sampler, 10) < 0.1


# --- stochastic samplers: seeds, batch rows, Brownian noise ---------------------------------------

STOCHASTIC_FNS = {sample_dpmpp_sde, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde, sample_ddpm, sample_lcm, sample_restart,
                  sample_tcd, SAMPLERS["Euler a"].fn}
STOCHASTIC = [name for name, spec in SAMPLERS.items() if spec.fn in STOCHASTIC_FNS]
MEAN4 = torch.linspace(-1, 1, 36, dtype=torch.float64).reshape(4, 3, 3)


def image_denoiser(x, sigma):
    """Data ~ N(MEAN4, S2) per element, for (B, 4, 3, 3) latents."""
    s2 = 0.25
    return MEAN4 + (x - MEAN4) * s2 / (s2 + sigma.reshape(-1, 1, 1, 1) ** 2)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_the_stochastic_list_covers_every_new_noisy_sampler():
    assert {"DPM++ SDE", "DPM++ 2M SDE Karras", "DPM++ 3M SDE", "DDPM", "LCM", "Restart", "TCD",
            "Euler a"} <= set(STOCHASTIC)
    assert len(STOCHASTIC) == 12


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_reproduce_per_seed_and_per_batch_row(name):
    """20 steps (Restart restarts from 20). The same seeds give the same images; image i of a batch is
    the image of its seed alone; another seed for one row changes that row only, and visibly."""
    spec, schedule = get_sampler(name), NoiseSchedule.from_config(ZSNR_TRAILING)
    sigmas = get_sigmas(schedule, 20, spec.sigma_kind)
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])

    def run(x, generators):
        return spec.bind(schedule)(image_denoiser, x.clone(), sigmas, generator=generators)

    batch = run(x, gens(5, 6, 7))
    assert torch.equal(batch, run(x, gens(5, 6, 7)))
    torch.testing.assert_close(run(x[1:2], gens(6)), batch[1:2], rtol=1e-6, atol=1e-6)
    other = run(x, gens(5, 8, 7))
    torch.testing.assert_close(other[[0, 2]], batch[[0, 2]], rtol=1e-6, atol=1e-6)
    assert (other[1] - batch[1]).abs().max().item() > 0.05


def test_brownian_increments_add_up_and_have_unit_variance():
    """noise(a, c) sqrt(T(a) - T(c)) = noise(a, b) sqrt(T(a) - T(b)) + noise(b, c) sqrt(T(b) - T(c)), T the
    VP noise level: one Brownian path, whatever steps it is asked for."""
    like = torch.zeros(2, 4, 16, 16)
    sigmas = [14.6, 0.03, 0.0]
    noise = BrownianNoise(like, sigmas, gens(3, 4))
    a, b, c = 5.0, 1.2, 0.3
    t = {s: vp_noise_level(s) for s in (a, b, c)}
    whole = noise(a, c) * math.sqrt(t[a] - t[c])
    parts = noise(a, b) * math.sqrt(t[a] - t[b]) + noise(b, c) * math.sqrt(t[b] - t[c])
    torch.testing.assert_close(whole, parts, rtol=1e-4, atol=1e-4)
    assert abs(noise(a, b).std().item() - 1) < 0.05
    again = BrownianNoise(like[1:], sigmas, gens(4))   # row 1 alone: the same path
    torch.testing.assert_close(again(a, b), noise(a, b)[1:])


@pytest.mark.parametrize("config", [SD, ZSNR_TRAILING], ids=["sd", "zsnr"])
@pytest.mark.parametrize("fn", [sample_dpmpp_sde, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde],
                         ids=["sde", "2m-sde", "3m-sde"])
def test_brownian_noise_keeps_a_seeds_image_across_step_counts(config, fn):
    """The reason for the Brownian tree: 20 and 40 steps of a seed end close together (rms 0.03 to 0.10
    measured), where fresh noise at every step gives another sample (0.53 to 0.68)."""
    schedule = NoiseSchedule.from_config(config)
    diffs = {}
    for kind in ("brownian", "fresh"):
        ends = []
        for steps in (20, 40):
            sigmas = get_sigmas(schedule, steps, "karras")
            x = torch.randn(16, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
            g = torch.Generator().manual_seed(1)
            fresh = {"noise": lambda s, s_next, g=g, x=x: torch.randn(x.shape, generator=g, dtype=x.dtype)}
            ends.append(fn(image_denoiser, x, sigmas, generator=g, **({} if kind == "brownian" else fresh)))
        diffs[kind] = (ends[0] - ends[1]).pow(2).mean().sqrt().item()
    assert diffs["brownian"] < 0.3 * diffs["fresh"], diffs


# --- Restart ---------------------------------------------------------------------------------------

def test_restart_below_20_steps_is_heun():
    sigmas = get_sigmas(NoiseSchedule.from_config(ZSNR_TRAILING), 19, "default")
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    assert torch.equal(sample_restart(image_denoiser, x, sigmas, generator=gens(1, 2)),
                       sample_heun(image_denoiser, x, sigmas))


@pytest.mark.parametrize("steps,k,times", [(20, 9, 1), (30, 9, 1), (40, 10, 2)])
def test_restart_plan_is_a1111s(steps, k, times):
    """N steps in all: N - K R main steps over the given sigmas (first and last kept), and R times K
    restart steps, a Karras ramp (k-diffusion's) from the main sigma nearest 2 down to the one nearest 0.1,
    entered by noising up to it right after the main pass reaches the one nearest 0.1."""
    sigmas = get_sigmas(NoiseSchedule.from_config(SD), steps, "karras")
    plan = restart_plan(sigmas)
    assert len(plan) == steps
    assert plan[0][0] == sigmas[0] and plan[-1][1] == 0
    rises = [i for i in range(1, len(plan)) if plan[i][0] > plan[i - 1][1]]
    assert len(rises) == times
    main = [plan[0][0]] + [b for i, (a, b) in enumerate(plan) if not any(r <= i < r + k for r in rises)]
    assert len(main) == steps - k * times + 1
    lo = min(main[:-1], key=lambda s: abs(s - 0.1))
    hi = min(main[:-1], key=lambda s: abs(s - 2.0))
    ramp = kdiff_karras(k + 1, lo, hi)[:-1].tolist()
    for r in rises:
        assert plan[r - 1][1] == lo
        assert [a for a, _ in plan[r:r + k]] + [plan[r + k - 1][1]] == pytest.approx(ramp, rel=1e-12)


# --- the schedule setting (A1111's "Schedule type") ------------------------------------------------

@pytest.mark.parametrize("name,schedule,sampler,kind", [
    ("DPM++ 2M", "Karras", "DPM++ 2M", "karras"),
    ("DPM++ 2M Karras", "Automatic", "DPM++ 2M Karras", "karras"),
    ("DPM++ 2M Karras", "karras", "DPM++ 2M Karras", "karras"),
    ("DPM++ 2M SDE Exponential", "Automatic", "DPM++ 2M SDE Exponential", "exponential"),
    ("unipc", "sgm uniform", "UniPC", "sgm_uniform"),
    ("Restart", "Align Your Steps", "Restart", "align_your_steps"),
    ("LCM", "Automatic", "LCM", "lcm"),      # the timesteps an LCM is distilled on (sigmas.lcm_sigmas)
])
def test_a_sampler_and_a_schedule_resolve_as_in_a1111(name, schedule, sampler, kind):
    spec, got = resolve_sampler(name, schedule)
    assert (spec.name, got) == (sampler, kind)


def test_conflicting_or_unknown_schedules_are_one_line_errors():
    with pytest.raises(ConfigError, match="runs on the Karras schedule, not Exponential: use sampler 'DPM"):
        resolve_sampler("DPM++ 2M Karras", "Exponential")
    with pytest.raises(ConfigError, match="unknown schedule 'cosine'; known schedules: Automatic, Uniform"):
        resolve_sampler("Euler", "cosine")
    with pytest.raises(ConfigError, match="schedule"):
        GenerationConfig("x", sampler="Euler Karras", schedule="Polyexponential")


@pytest.mark.parametrize("schedule,kind", [("Exponential", "exponential"), ("Polyexponential", "polyexponential"),
                                           ("Align Your Steps", "align_your_steps"), ("Uniform", "uniform")])
def test_sample_runs_on_the_chosen_schedule(schedule, kind):
    noise_schedule = NoiseSchedule.from_config(ZSNR_TRAILING)
    events = []
    sample("DPM++ 2M SDE", image_denoiser, torch.randn(1, 4, 3, 3, dtype=torch.float64), 6, noise_schedule,
           callback=events.append, generator=gens(1), schedule_type=schedule)
    assert [e.sigma for e in events] == get_sigmas(noise_schedule, 6, kind)[:-1].tolist()


def test_pipeline_records_the_schedule_and_a_schedule_suffix_is_the_same_run(tiny_model_dir):
    from sdlab.io.metadata import parse_infotext
    from sdlab.pipeline import Pipeline

    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    apart = pipe.generate(GenerationConfig("a red circle", sampler="DPM++ 3M SDE", schedule="Exponential", steps=4,
                                           seed=3, width=32, height=32))
    named = pipe.generate(GenerationConfig("a red circle", sampler="DPM++ 3M SDE Exponential", steps=4, seed=3,
                                           width=32, height=32))
    params = parse_infotext(apart.infotexts[0])[2]
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 3M SDE", "Exponential")
    assert np.array_equal(np.asarray(apart.images[0]), np.asarray(named.images[0]))
