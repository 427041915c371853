"""The shared loop: cancel and Ctrl-C save a checkpoint, memory options keep the result,
bad settings are ConfigErrors that name the field."""

import pytest
import torch

from sdlab.errors import Cancelled, ConfigError
from sdlab.training import checkpoints as ck
from sdlab.training.config import TrainingConfig
from sdlab.training.loop import make_accelerator, make_optimizer, train
from sdlab.training.methods.lora import LoRA, LoraOptions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from sdlab.world.data import export_folder

    return export_folder(tmp_path_factory.mktemp("loop") / "data", 3, seed=6)


def _cfg(model, data, out, **kw):
    base = dict(method="lora", data_dir=str(data), output_dir=str(out), model=str(model), max_steps=4,
                learning_rate=1e-2, checkpoint_every=100, device="cpu", options=LoraOptions(rank=2))
    base.update(kw)
    return TrainingConfig(**base)


@pytest.mark.parametrize("exc", [Cancelled, KeyboardInterrupt])
def test_interrupt_saves_checkpoint_then_resumes(tiny_model_dir, data, tmp_path, exc):
    from sdlab.callbacks import CancelToken

    token, out = CancelToken(), tmp_path / "run"

    def stop_after_two(event):
        assert set(event.metrics) == {"loss", "lr"} and event.total == 4
        if event.step == 1:
            if exc is Cancelled:
                token.cancel()
            else:
                raise KeyboardInterrupt

    with pytest.raises(exc):
        train(_cfg(tiny_model_dir, data, out), LoRA(LoraOptions(rank=2)), callback=stop_after_two, cancel=token)
    assert [p.name for p in ck.list_checkpoints(out / "checkpoints")] == ["step-00000002"]
    result = train(_cfg(tiny_model_dir, data, out), LoRA(LoraOptions(rank=2)), resume="latest")
    assert result.step == 4 and len(result.losses) == 2


def test_gradient_checkpointing_and_sliced_attention_keep_the_result(tiny_model_dir, data, tmp_path):
    results = []
    for i, kw in enumerate(({}, {"gradient_checkpointing": True, "attention": "sliced"}, {"attention": "sdpa"})):
        method = LoRA(LoraOptions(rank=2))
        train(_cfg(tiny_model_dir, data, tmp_path / str(i), max_steps=2, **kw), method)
        results.append(method.layers())
    # the same maths in another order: float rounding only (1.1e-5 seen on a busy 2-core machine); Adam's
    # first steps move every weight by about the learning rate (1e-2), so a real difference is far larger
    for other in results[1:]:
        assert all(torch.allclose(results[0][k].up, other[k].up, atol=1e-4) for k in results[0])


def test_bf16_mixed_precision_trains_on_cpu(tiny_model_dir, data, tmp_path):
    result = train(_cfg(tiny_model_dir, data, tmp_path / "bf16", max_steps=2, mixed_precision="bf16"),
                   LoRA(LoraOptions(rank=2)))
    assert all(0 < l < 10 for l in result.losses)


def test_bad_settings_are_config_errors(tiny_model_dir, data, tmp_path, capsys):
    from sdlab.cli.main import main

    with pytest.raises(ConfigError, match="resolution must be a multiple of 8"):
        _cfg(tiny_model_dir, data, tmp_path, resolution=30)
    with pytest.raises(ConfigError, match="lr_scheduler must be one of"):
        _cfg(tiny_model_dir, data, tmp_path, lr_scheduler="warp")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        make_accelerator(_cfg(tiny_model_dir, data, tmp_path, mixed_precision="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="use_8bit_adam needs a CUDA GPU"):
            make_optimizer(_cfg(tiny_model_dir, data, tmp_path, use_8bit_adam=True), [torch.nn.Parameter(torch.ones(1))])
    assert main(["train", "lora", "--data", str(tmp_path / "nope"), "--model", str(tiny_model_dir)]) == 2
    assert "data folder" in capsys.readouterr().err
    assert main(["train", "lora", "--data", str(data), "--model", str(tiny_model_dir), "--max-steps", "0"]) == 2
    assert "max_steps must be >= 1" in capsys.readouterr().err
    assert main(["train", "lora", "--data", str(data), "--model", str(tiny_model_dir), "--output-dir",
                 str(tmp_path / "o"), "--resume", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_warmup_stable_decay_holds_then_decays_and_resumes(tiny_model_dir, data, tmp_path):
    from sdlab.callbacks import CancelToken
    from sdlab.cli.main import main

    kw = dict(max_steps=6, lr_scheduler="warmup_stable_decay", lr_decay_steps=3, checkpoint_every=2)
    whole, resumed, token = [], [], CancelToken()
    train(_cfg(tiny_model_dir, data, tmp_path / "a", **kw), LoRA(LoraOptions(rank=2)),
          callback=lambda e: whole.append(e.metrics["lr"]))
    # the rate after each step: constant, then a cosine that reaches 0 at the last step
    assert whole[:3] == [1e-2] * 3 and whole[2] > whole[3] > whole[4] > whole[5] == 0

    def stop_after_two(event):
        resumed.append(event.metrics["lr"])
        if event.step == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        train(_cfg(tiny_model_dir, data, tmp_path / "b", **kw), LoRA(LoraOptions(rank=2)), callback=stop_after_two,
              cancel=token)
    train(_cfg(tiny_model_dir, data, tmp_path / "b", **kw), LoRA(LoraOptions(rank=2)), resume="latest",
          callback=lambda e: resumed.append(e.metrics["lr"]))
    assert resumed == pytest.approx(whole)
    with pytest.raises(ConfigError, match="lr_decay_steps must be between 1 and 6"):
        _cfg(tiny_model_dir, data, tmp_path, **{**kw, "lr_decay_steps": 7})
    with pytest.raises(ConfigError, match="lr_decay_steps is warmup_stable_decay's decay length"):
        _cfg(tiny_model_dir, data, tmp_path, lr_decay_steps=2)
    assert main(["train", "lora", "--data", str(data), "--model", str(tiny_model_dir), "--lr-scheduler",
                 "warmup_stable_decay", "--lr-decay-steps", "0"]) == 2


def test_caption_dropout_draws_empty_prompts_by_seed(tiny_model_dir, data, tmp_path):
    from sdlab.training.methods.finetune import FineTune

    method = FineTune()
    method.config = _cfg(tiny_model_dir, data, tmp_path, method="finetune", caption_dropout=0.3, options=None)
    texts = [method.caption_or_empty("a red circle", seed) for seed in range(2000)]
    share = texts.count("") / len(texts)
    assert 0.25 < share < 0.35 and set(texts) == {"", "a red circle"}
    assert texts == [method.caption_or_empty("a red circle", seed) for seed in range(2000)]  # same on resume
    method.config = _cfg(tiny_model_dir, data, tmp_path, method="finetune", options=None)
    assert all(method.caption_or_empty("x", seed) == "x" for seed in range(200))
    with pytest.raises(ConfigError, match="caption_dropout must be between 0.0 and 1.0"):
        _cfg(tiny_model_dir, data, tmp_path, caption_dropout=1.5)


def test_min_snr_weights_cap_the_easy_timesteps(tiny_model_dir, data, tmp_path):
    from diffusers import DDPMScheduler

    from sdlab.sampling import NoiseSchedule

    sd = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ac = DDPMScheduler(**sd).alphas_cumprod
    t = torch.tensor([0, 100, 500, 999])
    snr = ac[t] / (1 - ac[t])
    w = NoiseSchedule(**sd).min_snr_weights(t, 5.0)
    assert torch.allclose(w.double(), torch.where(snr > 5, 5 / snr, torch.ones_like(snr)).double(), rtol=1e-5)
    assert w[0] < 0.01 and w[-1] == 1.0     # nearly clean step down-weighted, the noisiest untouched
    v = NoiseSchedule(**sd, prediction_type="v_prediction").min_snr_weights(t, 5.0)
    assert torch.allclose(v.double(), (snr.clamp(max=5) / (snr + 1)).double(), rtol=1e-5)
    # in the loop: the same first batch, weighted, gives a smaller loss (every weight <= 1 here)
    plain = train(_cfg(tiny_model_dir, data, tmp_path / "plain", max_steps=1), LoRA(LoraOptions(rank=2)))
    weighted = train(_cfg(tiny_model_dir, data, tmp_path / "snr", max_steps=1, snr_gamma=0.01), LoRA(LoraOptions(rank=2)))
    assert 0 < weighted.losses[0] < plain.losses[0]
    with pytest.raises(ConfigError, match="snr_gamma"):
        _cfg(tiny_model_dir, data, tmp_path, snr_gamma=-1.0)


def test_offset_noise_shifts_each_channel_and_is_off_by_default(tiny_model_dir, data, tmp_path, capsys):
    from sdlab.cli.main import build_parser
    from sdlab.cli.train import config_from_args
    from sdlab.training.methods.base import sample_noise

    seeds = list(range(400))
    plain, t = sample_noise((4, 8, 8), seeds, 1000)
    g = torch.Generator("cpu").manual_seed(7)
    assert t[7] == torch.randint(0, 1000, (1,), generator=g)
    assert torch.equal(plain[7], torch.randn((4, 8, 8), generator=g))     # offset 0: the draws as before
    offset, t2 = sample_noise((4, 8, 8), seeds, 1000, offset=0.1)
    shift = offset - plain                                  # the same draws plus one constant per channel
    assert torch.equal(t, t2) and torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)
    assert 0.08 < shift[:, :, 0, 0].std().item() < 0.12
    # in the loop: the same first batch with offset noise gives another loss
    plain_run = train(_cfg(tiny_model_dir, data, tmp_path / "plain", max_steps=1), LoRA(LoraOptions(rank=2)))
    offset_run = train(_cfg(tiny_model_dir, data, tmp_path / "off", max_steps=1, noise_offset=0.5),
                       LoRA(LoraOptions(rank=2)))
    assert offset_run.losses[0] != plain_run.losses[0]
    with pytest.raises(ConfigError, match="noise_offset"):
        _cfg(tiny_model_dir, data, tmp_path, noise_offset=-0.1)
    args = build_parser().parse_args(["train", "lora", "--data", str(data), "--noise-offset", "0.05"])
    assert config_from_args(args, None).noise_offset == 0.05


def test_tag_shuffling_keeps_the_leading_tags_and_follows_the_seed(tiny_model_dir, data, tmp_path):
    method = LoRA(LoraOptions(rank=2))
    method.config = _cfg(tiny_model_dir, data, tmp_path, shuffle_tags=True, keep_tags=1)
    caption = "sks, red, circle, on the left, small"
    drawn = [method.shuffled_tags(caption, seed) for seed in range(40)]
    assert all(d.startswith("sks, ") and sorted(d.split(", ")) == sorted(caption.split(", ")) for d in drawn)
    assert len(set(drawn)) > 10 and drawn[3] == method.shuffled_tags(caption, 3)
    method.config = _cfg(tiny_model_dir, data, tmp_path)
    assert method.shuffled_tags(caption, 3) == caption                  # off by default
    with pytest.raises(ConfigError, match="turn on shuffle_tags"):
        _cfg(tiny_model_dir, data, tmp_path, keep_tags=2)


def test_cached_latents_match_and_resume_exactly(tiny_model_dir, data, tmp_path):
    from sdlab.callbacks import CancelToken
    from sdlab.training.loop import Trainer
    from sdlab.training.methods.vae_decoder import VaeDecoder

    kw = dict(random_flip=True, batch_size=2)
    plain = train(_cfg(tiny_model_dir, data, tmp_path / "plain", **kw), LoRA(LoraOptions(rank=2)))
    cached = train(_cfg(tiny_model_dir, data, tmp_path / "cached", cache_latents=True, **kw), LoRA(LoraOptions(rank=2)))
    assert cached.losses == pytest.approx(plain.losses, rel=1e-4)        # the same latents, encoded once
    trainer = Trainer(_cfg(tiny_model_dir, data, tmp_path / "look", cache_latents=True, **kw),
                      LoRA(LoraOptions(rank=2)))
    for k in range(6):
        trainer.micro_batch(k)
    assert 3 < len(trainer.latent_cache) <= 6                            # 3 images x (flipped or not)

    token = CancelToken()

    def stop(event):
        if event.step == 1:
            token.cancel()

    out = tmp_path / "run"
    with pytest.raises(Cancelled):
        train(_cfg(tiny_model_dir, data, out, cache_latents=True, checkpoint_every=2, **kw),
              LoRA(LoraOptions(rank=2)), callback=stop, cancel=token)
    resumed = train(_cfg(tiny_model_dir, data, out, cache_latents=True, checkpoint_every=2, **kw),
                    LoRA(LoraOptions(rank=2)), resume="latest")
    assert resumed.losses == cached.losses[2:]                            # re-encoded exactly the same
    with pytest.raises(ConfigError, match="needs centre crops: drop --random-crop or --cache-latents"):
        _cfg(tiny_model_dir, data, tmp_path, cache_latents=True, center_crop=False)
    with pytest.raises(ConfigError, match="trains on the pixels themselves"):
        Trainer(_cfg(tiny_model_dir, data, tmp_path / "vae", method="vae-decoder", options=VaeDecoder().options,
                     cache_latents=True), VaeDecoder())


def test_validation_loss_on_held_out_images(tiny_model_dir, data, tmp_path):
    import csv

    from sdlab.training.data import read_examples, split_examples
    from sdlab.training.methods.vae_decoder import VaeDecoder

    examples = read_examples(data)
    train_part, held = split_examples(examples, 0.3, seed=0)
    assert len(held) == 1 and len(train_part) == 2 and held[0] not in train_part
    assert split_examples(examples, 0.3, seed=0) == (train_part, held)
    with pytest.raises(ConfigError, match="leaves none to train on"):
        split_examples(examples, 0.9, seed=0)
    with pytest.raises(ConfigError, match="not both"):
        _cfg(tiny_model_dir, data, tmp_path, validation_split=0.3, validation_data=str(data))

    seen = []
    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, data, out, validation_split=0.3, validate_every=2), LoRA(LoraOptions(rank=2)),
          callback=lambda e: seen.append(e.metrics.get("val_loss")))
    rows = list(csv.DictReader(open(out / "logs" / "loss.csv")))
    measured = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    assert [s for s, _ in measured] == [2, 4] and [v for v in seen if v is not None] == [v for _, v in measured]
    assert measured[0][1] != measured[1][1] and (out / "logs" / "loss.png").is_file()
    # fixed noise and timesteps: a model that does not change keeps its validation loss exactly
    frozen = train(_cfg(tiny_model_dir, data, tmp_path / "frozen", validation_data=str(data), validate_every=1,
                        learning_rate=0.0), LoRA(LoraOptions(rank=2)), callback=lambda e: seen.append(e))
    values = {e.metrics["val_loss"] for e in seen[-frozen.step:]}
    assert len(values) == 1 and 0 < values.pop() < 10
    # the VAE decoder's validation loss is its round trip on the held-out images
    decoder = tmp_path / "decoder"
    train(_cfg(tiny_model_dir, data, decoder, method="vae-decoder", options=VaeDecoder().options,
               validation_split=0.3, validate_every=4), VaeDecoder())
    rows = list(csv.DictReader(open(decoder / "logs" / "loss.csv")))
    assert [r["step"] for r in rows if r["val_loss"]] == ["4"] and float(rows[-1]["val_loss"]) > 0


def test_a_run_writes_a_model_card(tiny_model_dir, data, tmp_path):
    from sdlab.models.hashing import sha256_file

    out = tmp_path / "run"
    train(_cfg(tiny_model_dir, data, out, instance_prompt="a sks", validation_split=0.3, validate_every=2),
          LoRA(LoraOptions(rank=2, lr_ratio_b=4.0)))
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {tiny_model_dir}\nlibrary_name: sdlab\n")
    assert "instance_prompt: a sks" in card and "Method options (besides the defaults): rank=2, lr_ratio_b=4.0." in card
    digest = sha256_file(out / "lora_kohya.safetensors")[:12]
    assert f"| `lora_kohya.safetensors` | LoRA, kohya / AUTOMATIC1111 layout | {digest} |" in card
    assert f'sdlab generate "a sks" --lora {out / "lora_kohya.safetensors"}:1.0' in card
    assert "Validation loss at step 4:" in card and "![loss](logs/loss.png)" in card
    mine = tmp_path / "mine"                                # a README.md of the user's is never overwritten
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    train(_cfg(tiny_model_dir, data, mine, max_steps=1), LoRA(LoraOptions(rank=2)))
    assert (mine / "README.md").read_text() == "my notes"
    assert "library_name: sdlab" in (mine / "MODEL_CARD.md").read_text()
