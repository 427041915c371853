"""One schedule object serves sampling and training: NoiseSchedule's training side (add_noise,
velocity, target, SNR / Min-SNR weights) is diffusers' DDPMScheduler, bit for bit."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler

import sdlab
from sdlab.sampling import NoiseSchedule

SHIPPED = json.loads((Path(sdlab.__file__).parent / "assets/shapes-sd/scheduler/scheduler_config.json").read_text())
SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")
CONFIGS = {"shipped (zero SNR, v)": SHIPPED, "SD 1.5 (epsilon)": SD15,
           "cosine, v": dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
           "linear, zero SNR": dict(beta_schedule="linear", rescale_betas_zero_snr=True)}


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(8, 4, 16, 16, generator=g), torch.randn(8, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    t[:2] = torch.tensor([0, 999])            # both ends, where zero terminal SNR bites
    return x0, noise, t


@pytest.mark.parametrize("name", CONFIGS)
def test_training_side_is_ddpm_scheduler_bit_for_bit(name):
    ref = DDPMScheduler.from_config(CONFIGS[name])
    ours = NoiseSchedule.from_config(ref.config)
    assert torch.equal(ours.training_alphas_cumprod, ref.alphas_cumprod)
    x0, noise, t = _batch()
    assert torch.equal(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    assert torch.equal(ours.velocity(x0, noise, t), ref.get_velocity(x0, noise, t))
    want = ref.get_velocity(x0, noise, t) if ref.config.prediction_type == "v_prediction" else noise
    assert torch.equal(ours.target(x0, noise, t), want)
    assert ours.num_train_timesteps == ref.config.num_train_timesteps


def test_zero_terminal_snr_trains_on_pure_noise_and_samples_from_a_finite_sigma():
    s = NoiseSchedule.from_config(SHIPPED)
    x0, noise, _ = _batch()
    last = torch.full((8,), 999)
    assert s.training_alphas_cumprod[-1].item() == 0.0 and s.snr(last).eq(0).all()
    assert torch.equal(s.add_noise(x0, noise, last), noise)            # x_T carries no signal
    assert torch.equal(s.target(x0, noise, last), -x0)                 # v at SNR 0 is -x0
    assert s.alphas_cumprod[-1].item() == 2.0**-24                     # sampling keeps sigma_max finite
    # float32 against float64: 4e-5 apart where alpha_bar is ~1e-7
    torch.testing.assert_close(s.alphas_cumprod[:-1], s.training_alphas_cumprod[:-1].double(), rtol=1e-4, atol=0)


def test_min_snr_weights_follow_the_prediction_type():
    t = torch.tensor([0, 100, 500, 998])
    eps, v = NoiseSchedule(**SD15), NoiseSchedule.from_config(SHIPPED)
    snr = eps.snr(t)
    assert torch.allclose(eps.min_snr_weights(t, 5.0).double(), snr.clamp(max=5) / snr, rtol=1e-6)
    snr = v.snr(t)
    assert torch.allclose(v.min_snr_weights(t, 5.0).double(), snr.clamp(max=5) / (snr + 1), rtol=1e-6)
    assert v.min_snr_weights(torch.tensor([999]), 5.0).item() == 0.0   # SNR 0: no signal to learn from
