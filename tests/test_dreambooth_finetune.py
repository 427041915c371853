"""DreamBooth (prior preservation with cached class images) and full fine-tuning (EMA)."""

import pytest
import torch

from sdlab.errors import ConfigError
from sdlab.training.config import TrainingConfig
from sdlab.training.loop import Trainer
from sdlab.training.methods.dreambooth import DreamBooth, DreamBoothOptions, generate_class_images
from sdlab.training.methods.finetune import FineTune, FineTuneOptions


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from sdlab.world.data import export_folder

    return export_folder(tmp_path_factory.mktemp("db") / "data", 3, seed=5)


def _cfg(method, model, data, out, **kw):
    return TrainingConfig(method=method.name, data_dir=str(data), output_dir=str(out), model=str(model),
                          checkpoint_every=100, device="cpu", options=method.options, **kw)


def test_dreambooth_prior_preservation(tiny_model_dir, data, tmp_path):
    from sdlab.pipeline import Pipeline

    opts = DreamBoothOptions(class_prompt="a circle", num_class_images=2, class_sampling_steps=2)
    method = DreamBooth(opts)
    trainer = Trainer(_cfg(method, tiny_model_dir, data, tmp_path / "out", instance_prompt="a sks circle",
                           max_steps=2, learning_rate=1e-3), method)
    cache = sorted((tmp_path / "out" / "class_images").glob("*.png"))
    assert [p.name for p in cache] == ["class-00000.png", "class-00001.png"]
    assert generate_class_images(method.c, opts, tmp_path / "out" / "class_images") == 0   # cached
    batch = trainer.micro_batch(0)
    with torch.no_grad():
        losses = []
        for w in (0.0, 1.0, 2.0):
            method.options = DreamBoothOptions(class_prompt="a circle", num_class_images=2, prior_loss_weight=w)
            losses.append(method.loss(batch).item())
    method.options = opts
    assert abs((losses[2] - losses[1]) - (losses[1] - losses[0])) < 1e-5 and losses[1] > losses[0]
    result = trainer.run()
    model = tmp_path / "out" / "model"
    assert result.saved == [model]
    tuned, base = Pipeline.load(model, device="cpu"), Pipeline.load(tiny_model_dir, device="cpu")
    diff = [(a - b).abs().max().item() for a, b in zip(tuned.c.unet.parameters(), base.c.unet.parameters())]
    assert max(diff) > 0
    assert all(torch.equal(a, b) for a, b in zip(tuned.c.vae.parameters(), base.c.vae.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(tuned.c.text_encoder.parameters(), base.c.text_encoder.parameters()))


def test_dreambooth_needs_class_prompt():
    with pytest.raises(ConfigError, match="class_prompt"):
        DreamBoothOptions(class_prompt=None)


def test_finetune_saves_ema_weights_and_keeps_text_encoder(tiny_model_dir, data, tmp_path):
    from sdlab.pipeline import Pipeline

    method = FineTune(FineTuneOptions(freeze_text_encoder=True))
    trainer = Trainer(_cfg(method, tiny_model_dir, data, tmp_path / "ft", max_steps=2, learning_rate=1e-3,
                           use_ema=True, ema_decay=0.5, validation_prompts=("a red circle",), validate_every=1,
                           validation_steps=2, validation_images=2), method)
    trainer.run()
    saved = Pipeline.load(tmp_path / "ft" / "model", device="cpu")
    shadow = trainer.ema.shadow_params
    raw = [p.detach() for p in trainer.params]
    assert len(shadow) == len(list(saved.c.unet.parameters()))
    assert all(torch.equal(s, p) for s, p in zip(shadow, saved.c.unet.parameters()))
    assert any(not torch.equal(s, r) for s, r in zip(shadow, raw))            # EMA is not the raw weights
    base = Pipeline.load(tiny_model_dir, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(saved.c.text_encoder.parameters(), base.c.text_encoder.parameters()))
    from PIL import Image
    grid = Image.open(tmp_path / "ft" / "samples" / "step-00000002.png")
    assert grid.size == (32, 16)                                  # 2 images at the native 16x16, one prompt
