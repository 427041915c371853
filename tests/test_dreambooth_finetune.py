"""DreamBooth (prior preservation with cached class images) and full fine-tuning (EMA)."""

import pytest
import torch

from sdlab.errors import ConfigError
from sdlab.training.config import TrainingConfig
from sdlab.training.loop import Trainer
from sdlab.training.methods.dreambooth import DreamBooth, DreamBoothOptions
from sdlab.training.methods.prior import generate_class_images
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
    with pytest.raises(ConfigError, match="non-empty string"):
        DreamBoothOptions(class_prompt=["a circle", ""])


def test_several_class_prompts_are_cached_with_their_captions(tiny_model_dir, tmp_path):
    import json

    from sdlab.pipeline import Pipeline
    from sdlab.training.data import read_examples

    components = Pipeline.load(tiny_model_dir, device="cpu").c
    folder = tmp_path / "class"
    opts = DreamBoothOptions(class_prompt=["a circle", "a red square"], num_class_images=3, class_sampling_steps=2)
    assert generate_class_images(components, opts, folder) == 3
    assert [(e.path.name, e.text) for e in read_examples(folder)] == [
        ("class-00000.png", "a circle"), ("class-00001.png", "a red square"), ("class-00002.png", "a circle")]
    assert generate_class_images(components, opts, folder) == 0
    changed = DreamBoothOptions(class_prompt=["a circle", "a blue star"], num_class_images=3, class_sampling_steps=2)
    assert generate_class_images(components, changed, folder) == 1      # only image 1 had another prompt
    assert [json.loads(line)["text"] for line in (folder / "metadata.jsonl").read_text().splitlines()] == [
        "a circle", "a blue star", "a circle"]


def test_prior_loss_uses_each_class_image_caption(tiny_model_dir, data, tmp_path):
    """A captioned class folder of one's own (no class prompt): the prior loss reads each image
    with its own caption, so changing a caption changes the loss."""
    import json
    import shutil

    own = tmp_path / "reg"
    shutil.copytree(data, own)
    lines = [json.loads(line) for line in (own / "metadata.jsonl").read_text().splitlines()]
    losses = []
    for captions in (["a circle"] * 3, ["a green star"] * 3):
        (own / "metadata.jsonl").write_text("".join(json.dumps({"file_name": r["file_name"], "text": t}) + "\n"
                                                    for r, t in zip(lines, captions)))
        method = DreamBooth(DreamBoothOptions(class_data_dir=str(own), num_class_images=3))
        trainer = Trainer(_cfg(method, tiny_model_dir, data, tmp_path / f"out{len(losses)}", max_steps=1), method)
        assert method.class_data.texts == captions
        with torch.no_grad():
            losses.append(method.loss(trainer.micro_batch(0)).item())
    assert losses[0] != losses[1]


def test_lora_with_prior_preservation(tiny_model_dir, data, tmp_path):
    """LoRA takes DreamBooth's prior (as diffusers' DreamBooth-LoRA script does): the CLI turns
    it on with --class-prompt, class images are generated and the loss grows with the weight."""
    from argparse import Namespace

    from sdlab.cli.main import build_parser
    from sdlab.cli.train import method_from_args
    from sdlab.training.methods.lora import LoRA, LoraOptions

    args = build_parser().parse_args(["train", "lora", "--data", str(data), "--class-prompt", "a circle",
                                      "--class-prompt", "a square", "--num-class-images", "2"])
    method = method_from_args(args)
    assert method.options.prior_preservation and method.options.class_prompts == ("a circle", "a square")
    assert not method_from_args(Namespace(**{**vars(args), "class_prompt": None})).options.prior_preservation
    losses = []
    for w in (0.0, 1.0):
        method = LoRA(LoraOptions(rank=2, prior_preservation=True, class_prompt=("a circle", "a square"),
                                  num_class_images=2, class_sampling_steps=2, prior_loss_weight=w))
        trainer = Trainer(_cfg(method, tiny_model_dir, data, tmp_path / "out", max_steps=1), method)
        assert method.class_data.texts == ["a circle", "a square"]
        with torch.no_grad():
            losses.append(method.loss(trainer.micro_batch(0)).item())
    assert losses[1] > losses[0]


def test_own_class_folder_is_not_overwritten_by_generated_images(tiny_model_dir, data, tmp_path):
    """A captioned folder of one's own plus --class-prompt: refused, and the folder untouched."""
    import shutil

    from sdlab.pipeline import Pipeline

    own = tmp_path / "reg"
    shutil.copytree(data, own)
    before = {p.name: p.read_bytes() for p in own.iterdir()}
    opts = DreamBoothOptions(class_prompt="a circle", class_data_dir=str(own), num_class_images=2, class_sampling_steps=2)
    with pytest.raises(ConfigError, match="images of its own"):
        generate_class_images(Pipeline.load(tiny_model_dir, device="cpu").c, opts, own)
    assert {p.name: p.read_bytes() for p in own.iterdir()} == before


def test_class_folder_without_captions_is_refused(tiny_model_dir, data, tmp_path):
    empty = tmp_path / "reg"
    empty.mkdir()
    method = DreamBooth(DreamBoothOptions(class_data_dir=str(empty)))
    with pytest.raises(ConfigError, match="class data: '.*reg' has no captions: give an instance prompt.*or give "
                                          "--class-prompt to generate class images there"):
        Trainer(_cfg(method, tiny_model_dir, data, tmp_path / "out", max_steps=1), method)


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
