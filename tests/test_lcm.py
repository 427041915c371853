"""`sdlab train lcm` (latent consistency distillation, full and LCM-LoRA) on the tiny model, and LCM
sampling in sdlab's loop: the LCM schedule, the boundary condition, the guidance embedding."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdlab import GenerationConfig, Pipeline
from sdlab.cli.main import main
from sdlab.errors import ConfigError
from sdlab.sampling import NoiseSchedule, get_sigmas, resolve_sampler
from sdlab.sampling.denoiser import Denoiser, consistency_scalings, guidance_embedding, w_conditioned
from sdlab.sampling.sigmas import lcm_timesteps
from sdlab.training.checkpoints import load_checkpoint
from sdlab.training.loop import train
from sdlab.training.methods import registry
from sdlab.training.methods.lcm import LORA_FILE, LCMDistillation, LCMOptions, w_conditioned_unet


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from sdlab.world.data import export_folder

    return export_folder(tmp_path_factory.mktemp("lcmw") / "world", 4, seed=4)


@pytest.fixture(scope="module")
def eps_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with SD 1.5's epsilon, scaled-linear, leading schedule."""
    out = tmp_path_factory.mktemp("eps") / "tiny-eps"
    shutil.copytree(tiny_model_dir, out)
    path = out / "scheduler" / "scheduler_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(prediction_type="epsilon", rescale_betas_zero_snr=False, timestep_spacing="leading")
    path.write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def _run(model, world, out, steps, resume=None, **options):
    spec = registry.get("lcm")
    opts = LCMOptions(**options)
    config = spec.config(opts, data_dir=str(world), output_dir=str(out), model=str(model), max_steps=steps,
                         batch_size=2, checkpoint_every=1, learning_rate=1e-3, device="cpu")
    return train(config, spec.build(opts), resume=resume)


@pytest.mark.parametrize("options,result", [({}, "model/unet/diffusion_pytorch_model.safetensors"),
                                            ({"lora": True, "rank": 2}, LORA_FILE)])
def test_both_modes_train_with_finite_loss_and_resume_exactly(tiny_model_dir, world, tmp_path, options, result):
    straight = _run(tiny_model_dir, world, tmp_path / "a", 3, **options)
    _run(tiny_model_dir, world, tmp_path / "b", 2, **options)
    named = {"lora_targets": "all"} if options else {"w_dim": 256}       # a resume may name a default
    _run(tiny_model_dir, world, tmp_path / "b", 3, resume="latest", **options, **named)
    assert all(np.isfinite(straight.losses)) and straight.losses[0] > 0
    a, b = load_file(tmp_path / "a" / result), load_file(tmp_path / "b" / result)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if not options:         # the target network is part of the checkpoint, so the resumed run matched it too
        assert "time_embedding.cond_proj.weight" in a and a["time_embedding.cond_proj.weight"].abs().max() > 0
    else:
        assert all(k.startswith("unet.") for k in a) and any(".resnets." in k for k in a)   # the "all" targets
    with pytest.raises(ConfigError, match="lora"):                      # a resume keeps the mode
        _run(tiny_model_dir, world, tmp_path / "b", 4, resume="latest", **({} if options else {"lora": True}))
    _, state = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000003")   # as `sdlab eval --run-dir`
    pipe = Pipeline.load(tiny_model_dir)
    config = GenerationConfig("a red circle", sampler="LCM", steps=2, seed=1, cfg_scale=1.0)
    before = np.asarray(pipe.generate(config).images[0], dtype=float)
    registry.get("lcm").apply_checkpoint(pipe, state, tmp_path / "b")
    assert w_conditioned(pipe.c.unet) == (not options)
    assert np.abs(np.asarray(pipe.generate(config).images[0], dtype=float) - before).max() > 0


def test_full_lcm_trains_under_bf16_with_gradient_checkpointing(tiny_model_dir, world, tmp_path):
    spec, opts = registry.get("lcm"), LCMOptions(w_dim=8)
    config = spec.config(opts, data_dir=str(world), output_dir=str(tmp_path / "m"), model=str(tiny_model_dir),
                         max_steps=1, batch_size=2, mixed_precision="bf16", gradient_checkpointing=True,
                         device="cpu")
    method = spec.build(opts)
    result = train(config, method)
    assert np.isfinite(result.losses).all() and method.student.is_gradient_checkpointing


def test_epsilon_models_distil_too(eps_model_dir, world, tmp_path):
    result = _run(eps_model_dir, world, tmp_path / "e", 2, lora=True, rank=2, loss_type="l2")
    assert all(np.isfinite(result.losses)) and result.losses[0] > 0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_x0_and_noise_recovered_from_either_prediction(prediction):
    method = LCMDistillation()
    method.schedule = NoiseSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type=prediction, rescale_betas_zero_snr=prediction != "epsilon")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999 if prediction != "epsilon" else 980])
    x = method.schedule.add_noise(x0, noise, t)
    got_x0, got_eps = method.x0_eps(method.schedule.target(x0, noise, t), x, t)
    assert torch.allclose(got_x0, x0, atol=1e-4) and torch.allclose(got_eps, noise, atol=1e-4)


def test_student_starts_as_the_teacher_and_w_changes_it_once_trained(tiny_pipe):
    pipe = tiny_pipe
    student = w_conditioned_unet(pipe.c.unet, 8)
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    teacher = Denoiser(pipe.c.unet, pipe.schedule)
    with torch.no_grad():
        for w in (1.0, 7.5):
            d = Denoiser(student, pipe.schedule)
            d.guidance_w = w
            assert torch.equal(d(x, 3.0, cond), teacher(x, 3.0, cond))
        torch.nn.init.normal_(student.time_embedding.cond_proj.weight, std=0.1)
        outs = []
        for w in (1.0, 7.5):
            d.guidance_w = w
            outs.append(d(x, 3.0, cond))
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_the_lora_teacher_is_the_base_unet_and_an_lcm_is_not_distilled_again(tiny_model_dir, tiny_pipe):
    spec, opts = registry.get("lcm"), LCMOptions(lora=True, rank=2)
    method, components = spec.build(opts), Pipeline.load(tiny_model_dir).c
    method.setup(components, spec.config(opts, data_dir="d", output_dir="o"), None)
    for name, p in components.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)         # peft starts B at zero: make the adapters matter
    g = torch.Generator().manual_seed(2)
    x, t, cond = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        base = tiny_pipe.c.unet(x, t, encoder_hidden_states=cond).sample
        with method.base_unet() as teacher:
            assert torch.equal(teacher(x, t, encoder_hidden_states=cond).sample, base)
        assert not torch.allclose(components.unet(x, t, encoder_hidden_states=cond).sample, base)   # student
    with pytest.raises(ConfigError, match="guidance embedding already"):
        w_conditioned_unet(w_conditioned_unet(tiny_pipe.c.unet, 8), 8)


def test_guidance_embedding_and_boundary_condition_are_diffusers():
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    w = torch.tensor([0.0, 2.5, 6.5])
    for dim in (8, 256, 7):
        ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        assert torch.allclose(guidance_embedding(w, dim), ref, atol=1e-6)
    sched = LCMScheduler()
    for t in (0, 19, 259, 999):
        c_skip, c_out = consistency_scalings(torch.tensor([t]))
        ref = sched.get_scalings_for_boundary_condition_discrete(t)
        assert c_skip.item() == pytest.approx(ref[0], rel=1e-6, abs=1e-12) and c_out.item() == pytest.approx(ref[1])


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_sampler_visits_lcmschedulers_timesteps(tiny_pipe, steps):
    from diffusers import LCMScheduler

    pipe = tiny_pipe
    ref = LCMScheduler.from_config(pipe.c.scheduler_config)
    ref.set_timesteps(steps)
    assert lcm_timesteps(pipe.schedule, steps).tolist() == ref.timesteps.tolist()
    assert resolve_sampler("LCM")[1] == "lcm"
    sigmas = get_sigmas(pipe.schedule, steps, "lcm")
    assert torch.allclose(pipe.schedule.sigma_to_t(sigmas[:-1]), ref.timesteps.float(), atol=1e-3)


def _count_unet_calls(pipe):
    calls = []
    pipe.c.unet.register_forward_hook(lambda m, a, k: calls.append(a[0].shape[0]))
    return calls


def test_full_lcm_generates_in_one_unet_pass_per_step_with_w_from_cfg_scale(tiny_model_dir, world, tmp_path,
                                                                            capsys):
    _run(tiny_model_dir, world, tmp_path / "f", 1, w_dim=8)
    model = tmp_path / "f" / "model"
    scheduler = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler" and "use_karras_sigmas" not in scheduler
    pipe = Pipeline.load(model)
    calls = _count_unet_calls(pipe)
    torch.nn.init.normal_(pipe.c.unet.time_embedding.cond_proj.weight, std=0.1)     # so w shows
    images = [np.asarray(pipe.generate(GenerationConfig("a red circle", sampler="LCM", steps=4, seed=3,
                                                        cfg_scale=w)).images[0], dtype=float) for w in (1.0, 7.5)]
    assert calls == [1] * 8 and np.abs(images[0] - images[1]).max() > 0
    assert main(["generate", "a red circle", "--model", str(model), "--sampler", "LCM", "--steps", "4",
                 "--cfg-scale", "1", "--seed", "1", "--out", str(tmp_path / "img")]) == 0
    assert len(list((tmp_path / "img").rglob("*.png"))) == 1
    assert "--sampler LCM --steps 4" in (tmp_path / "f" / "README.md").read_text()


def test_lcm_lora_loads_in_plain_diffusers_with_lcmscheduler_and_in_sdlab(tiny_model_dir, world, tmp_path):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    _run(tiny_model_dir, world, tmp_path / "l", 2, lora=True, rank=2)
    path = tmp_path / "l" / LORA_FILE
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)

    def run():
        return pipe("a red circle", num_inference_steps=4, guidance_scale=1.0, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images[0]

    plain = run()
    pipe.load_lora_weights(str(path))
    with_lora = run()
    assert np.isfinite(with_lora).all() and np.abs(with_lora - plain).max() > 1e-4
    assert "| `lcm_lora.safetensors` | LCM-LoRA, diffusers / peft layout |" in (tmp_path / "l" / "README.md").read_text()
    assert main(["generate", "a red circle", "--model", str(tiny_model_dir), "--lora", str(path), "--sampler", "LCM",
                 "--steps", "4", "--cfg-scale", "1", "--seed", "1", "--out", str(tmp_path / "img")]) == 0


@pytest.mark.parametrize("flags,message", [
    (["--w-min", "9", "--w-max", "4"], "w_min (9) must be <= w_max (4)"),
    (["--w-min", "20"], "w_min (20) must be <= w_max (12)"),       # the unset end: 1.6 x the model's 7.5
    (["--lora", "--w-dim", "64"], "--w-dim is an option of a full LCM (drop --lora)"),
    (["--lora", "--target-decay", "0.9"], "--target-decay is an option of a full LCM (drop --lora)"),
    (["--rank", "8"], "--rank is an option of an LCM-LoRA (add --lora)"),
    (["--loss-type", "l1"], "huber, l2"),
])
def test_bad_flags_are_one_line_errors(capsys, tiny_model_dir, world, tmp_path, flags, message):
    code = main(["train", "lcm", "--data", str(world), "--output-dir", str(tmp_path / "o"),
                 "--model", str(tiny_model_dir), *flags])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]     # (after the loading bar, if it loaded)
    assert code == 2 and len(errors) == 1 and errors[0].startswith("sdlab: error: ") and message in errors[0], err


@pytest.mark.parametrize("recommended, expected", [(7.5, (3.0, 12.0)), (3.0, (1.2, 4.8)), (1.0, (1.0, 1.6))])
def test_the_teachers_guidance_range_follows_the_models_recommended_scale(recommended, expected):
    assert LCMOptions().guidance_range(recommended) == pytest.approx(expected)
    assert LCMOptions(w_min=1.5).guidance_range(recommended)[0] == 1.5


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "lcm", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for flag in ("--lora", "--w-min", "--w-max", "--loss-type", "--huber-c", "--w-dim", "--target-decay", "--rank",
                 "--lora-targets"):
        assert flag in out


@pytest.mark.parametrize("options", [{}, {"lora": True, "rank": 2}])
def test_validation_samples_show_the_student_with_the_lcm_sampler(tiny_model_dir, world, tmp_path, monkeypatch,
                                                                  options):
    seen = []
    real = Pipeline.generate
    monkeypatch.setattr(Pipeline, "generate", lambda self, config, **kw: seen.append(
        (w_conditioned(self.c.unet), config.sampler, config.steps, config.cfg_scale)) or real(self, config, **kw))
    spec = registry.get("lcm")
    opts = LCMOptions(**options)
    config = spec.config(opts, data_dir=str(world), output_dir=str(tmp_path / "v"), model=str(tiny_model_dir),
                         max_steps=1, batch_size=2, learning_rate=1e-3, device="cpu",
                         validation_prompts=("a red circle",), validation_images=1)
    train(config, spec.build(opts))
    assert seen and set(seen) == {(not options, "LCM", 4, 1.0 if options else 7.5)}
