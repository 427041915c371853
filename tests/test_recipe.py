"""The base-model recipe (sdlab.recipe): stage checkpoints in the training loop's format that
resume exactly, a stage that continues its optimizer, and, slow, `sdlab world train-model`
end to end: killed during the UNet stage, resumed with the same command, assembled, continued
from the assembled folder."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sdlab.models.shipped import SHIPPED
from sdlab.recipe import stages
from sdlab.training import checkpoints as ck

ROOT = Path(__file__).resolve().parents[1]


def _tiny_stage(run_dir, max_steps, interrupt_at=None):
    """A stage on a tiny text encoder whose steps draw from every random stream a stage has (its
    python and torch streams, the global torch RNG through dropout), run to `max_steps`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    stage = stages.Stage(run_dir, "tiny")
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=8, dropout=0.5)
    net = stage.model("net", lambda: CLIPTextModel(config), "cpu")
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    stage.restore_optimizer(opt)
    rng, gen = stage.random(5)

    def step():
        if stage.progress["step"] == interrupt_at:
            raise KeyboardInterrupt
        ids = torch.randint(0, 16, (4, 8), generator=gen)
        return stages.optimizer_step(opt, (net(ids).last_hidden_state - rng.random()).pow(2).mean())

    stages.run_timed("tiny", 10.0, stage.progress, step, stage.save, log=lambda *_: None, max_steps=max_steps)
    return stage.save()


def test_stage_checkpoints_resume_exactly(tmp_path):
    ref = _tiny_stage(tmp_path / "ref", 6)
    with pytest.raises(KeyboardInterrupt):                       # Ctrl-C saves, as the training loop does
        _tiny_stage(tmp_path / "run", 6, interrupt_at=3)
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run" / "tiny" / "checkpoints")] == ["step-00000003"]
    run = _tiny_stage(tmp_path / "run", 6)
    assert ref.name == run.name == "step-00000006"
    assert sorted(p.name for p in run.iterdir()) == ["state.json", "state.safetensors"]   # no pickle
    with safe_open(str(ref / "state.safetensors"), "pt") as a, safe_open(str(run / "state.safetensors"), "pt") as b:
        assert a.keys() == b.keys() and len(a.keys()) > 10      # weights, Adam moments, RNG states
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
    assert stages.progress(tmp_path / "run", "tiny")["step"] == 6
    assert [p.name for p in ck.list_checkpoints(tmp_path / "run" / "tiny" / "checkpoints")] == ["step-00000006"]


def test_vae_stage_continues_its_optimizer_and_budget(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from sdlab.recipe import architecture, vae

    tiny = dict(architecture.vae_config(), block_out_channels=(8, 8, 8), layers_per_block=1)
    monkeypatch.setattr(architecture, "build_vae", lambda: AutoencoderKL(**tiny))
    monkeypatch.setattr(vae, "readback", lambda model: {"shape": 0.5})       # 256 renders read by the oracle
    run = tmp_path / "run"
    vae.train_vae(run, 0.0001, batch=2, log=lambda *_: None)
    first = stages.load(run, "vae")
    assert first["progress"]["step"] >= 1 and first["progress"]["readback"] == {"shape": 0.5}
    vae.train_vae(run, 0.0001, batch=2, log=lambda *_: None)
    second = stages.load(run, "vae")
    steps = second["progress"]["step"]
    assert steps > first["progress"]["step"] and second["progress"]["seconds"] > first["progress"]["seconds"]
    assert second["optimizer"]["state"][0]["step"].item() == steps           # Adam continued, not restarted
    assert second["models"]["vae"]["config"]["block_out_channels"] == (8, 8, 8)


def test_world_never_imports_the_pipeline():
    code = ("import importlib, pkgutil, sys, sdlab.world\n"
            "for m in pkgutil.iter_modules(sdlab.world.__path__): importlib.import_module('sdlab.world.' + m.name)\n"
            "print(sorted(m for m in ('sdlab.pipeline', 'sdlab.recipe', 'diffusers', 'transformers', 'torch')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _train_model(run, out, clip, *extra):
    return [sys.executable, "-m", "sdlab.cli.main", "world", "train-model", "--run-dir", str(run), "--out", str(out),
            "--clip-out", str(clip), "--vae-minutes", "0.2", "--decoder-minutes", "0.2", "--clip-minutes", "0.2",
            "--cache-size", "300", "--threads", "1", *extra]


@pytest.mark.slow
def test_train_model_killed_in_the_unet_stage_resumes_to_completion(tmp_path):
    from sdlab import GenerationConfig, Pipeline

    run, out, clip = tmp_path / "run", tmp_path / "model", tmp_path / "shapes-clip"   # --init-from's default pair
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    cmd = _train_model(run, out, clip, "--unet-minutes", "0.2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 1800
        while not (run / "latents.safetensors").exists():        # the UNet stage has begun
            assert proc.poll() is None, "train-model ended before the UNet stage"
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    done = {s: stages.latest(run, s) for s in ("vae", "vae_decoder", "clip")}
    assert all(done.values())
    mtimes = {s: (p / "state.safetensors").stat().st_mtime for s, p in done.items()}

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {s: (stages.latest(run, s) / "state.safetensors").stat().st_mtime for s in done} == mtimes  # not redone
    unet = stages.load(run, "unet")
    assert unet["progress"]["step"] >= 1 and unet["progress"]["scaling_factor"] > 0 and "ema" in unet
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name or p.suffix in (".pt", ".pth", ".bin")]
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert sorted(p.name for p in (out / "tokenizer").iterdir()) == ["merges.txt", "tokenizer_config.json",
                                                                     "vocab.json"]       # no tokenizer.json
    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())
    for name in ("generation_defaults.json", "training_defaults.json"):      # the recipe's measured settings
        assert (out / name).read_text() == (SHIPPED['shapes-sd'] / name).read_text()
    budgets = json.loads((out / "training_state.json").read_text())
    assert budgets["unet"]["step"] == unet["progress"]["step"] and budgets["vae"]["readback"]
    image = Pipeline.load(out).generate(GenerationConfig("a red circle", steps=2, seed=0)).images[0]
    assert image.size == (64, 64) and np.asarray(image).std() > 0

    # A larger budget continues the UNet from its checkpoint, optimizer and EMA included.
    more = unet["progress"]["seconds"] / 60 + 0.05
    res = subprocess.run(_train_model(run, out, clip, "--unet-minutes", str(more)), env=env, capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    again = stages.load(run, "unet")
    steps = again["progress"]["step"]
    assert steps > unet["progress"]["step"] and again["optimizer"]["state"][0]["step"].item() == steps
    assert again["ema"]["optimization_step"] == steps

    # A new run folder from the assembled model continues its UNet and text encoder.
    seeded = tmp_path / "run2"
    cmd = _train_model(seeded, tmp_path / "model2", tmp_path / "clip2",
                       "--unet-minutes", str(again["progress"]["seconds"] / 60 + 0.05),
                       "--init-from", str(out), "--caption-mismatch", "0.3")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-2000:]
    third = stages.load(seeded, "unet")["progress"]
    assert third["step"] > steps and third["optimizer_start"] == steps and third["caption_mismatch"] == 0.3
    res = subprocess.run(cmd[:-1] + ["0.1"], env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 2 and "trained with --caption-mismatch 0.3" in res.stderr      # not mixed silently
    assert third["scaling_factor"] == again["progress"]["scaling_factor"]
    assert stages.progress(seeded, "vae")["step"] == stages.progress(run, "vae")["step"]


def test_training_prompts_drop_and_mismatch_captions_at_their_rates():
    from sdlab.recipe.unet import CAPTION_DROPOUT, training_prompt
    from sdlab.world.captions import caption
    from sdlab.world.scene import SceneSampler

    rng = random.Random(0)
    scenes = [SceneSampler().sample(rng) for _ in range(200)]

    def rates(mismatch):
        rng, empty, foreign = random.Random(1), 0, 0
        for n in range(4000):
            i = n % len(scenes)
            state = rng.getstate()
            text = training_prompt(scenes, i, rng, mismatch)
            own = random.Random()
            own.setstate(state)
            own.random()                                     # the dropout draw
            if mismatch:
                own.random()                                 # the mismatch draw
            empty += text == ""
            foreign += text != "" and text != caption(scenes[i], own)
        return empty / 4000, foreign / 4000

    assert rates(0.0) == (pytest.approx(CAPTION_DROPOUT, abs=0.02), 0.0)
    empty, foreign = rates(0.3)
    assert empty == pytest.approx(CAPTION_DROPOUT, abs=0.02)
    assert foreign == pytest.approx(0.9 * 0.3, abs=0.03)    # another scene's (rarely its own or the same words)


@pytest.mark.parametrize("bad", [-0.1, 0.95])
def test_a_bad_caption_mismatch_stops_before_any_stage(tmp_path, bad):
    from sdlab.errors import ConfigError
    from sdlab.recipe.train import train_model

    with pytest.raises(ConfigError, match="from 0 to 0.9"):
        train_model(tmp_path / "run", tmp_path / "out", caption_mismatch=bad)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", [0.0, -1e-4, 0.5])
def test_a_bad_unet_lr_stops_before_any_stage(tmp_path, bad):
    from sdlab.errors import ConfigError
    from sdlab.recipe.train import train_model

    with pytest.raises(ConfigError, match="at most 0.01"):
        train_model(tmp_path / "run", tmp_path / "out", unet_lr=bad)
    assert not (tmp_path / "run").exists()


def test_eval_model_passes_cfg_rescale_to_every_image():
    """`sdlab world eval-model --guidance-rescale`: each image is generated with CFG rescale's phi
    (Lin et al. 2023) and the report records it."""
    from types import SimpleNamespace

    from PIL import Image

    from sdlab.recipe.evaluate import evaluate

    seen = []

    def generate(config):
        seen.append((config.cfg_scale, config.guidance_rescale))
        return SimpleNamespace(images=[Image.new("RGB", (64, 64))])

    pipe = SimpleNamespace(generate=generate, generation_defaults={"cfg_scale": 3.0})
    report = evaluate(pipe, n=2, steps=2, cfgs=(7.5,), sets=("seen",), guidance_rescale=0.7)
    assert report["guidance_rescale"] == 0.7 and set(report["results"]) == {"seen@cfg7.5"}
    assert seen == [(7.5, 0.7), (7.5, 0.7)]


def test_an_assembled_model_recommends_the_recipes_measured_settings(tmp_path):
    """assemble() copies the shipped model's generation_defaults.json (CFG 3) and training_defaults.json:
    they were measured on this recipe's output, and a model folder without them falls back to Stable
    Diffusion's 7.5, which over-guides it."""
    from sdlab.models.generation_defaults import read_generation_defaults
    from sdlab.models.training_defaults import read_training_defaults
    from sdlab.recipe.assemble import recipe_settings

    recipe_settings(tmp_path)
    assert read_generation_defaults(tmp_path) == read_generation_defaults(SHIPPED["shapes-sd"]) == {"cfg_scale": 3.0}
    assert read_training_defaults(tmp_path) == read_training_defaults(SHIPPED["shapes-sd"])
    assert "finetune" in read_training_defaults(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--guidance-rescale", "2"], "guidance_rescale must be between 0.0 and 1.0, got 2.0"),
    (["--n", "0"], "--n is the number of samples per prompt set, at least 1; got 0"),
    (["--sampler", "Euler z"], "unknown sampler 'Euler z'"),
    (["--cfg", "1", "-3"], "cfg_scale must be between 0.0 and 100.0, got -3.0"),
])
def test_eval_model_refuses_bad_flags_before_loading(flags, message, capsys, monkeypatch):
    from sdlab.cli.main import main
    from sdlab.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "load", classmethod(lambda cls, *a, **k: pytest.fail("loaded the model")))
    assert main(["world", "eval-model", *flags]) == 2
    assert message in capsys.readouterr().err
