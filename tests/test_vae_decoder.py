"""VAE decoder fine-tuning (encoder frozen) and swapping a VAE into a model (`--vae`):
folders, single LDM-layout files, infotext, and clear refusals."""

import json

import pytest
import torch

from sdlab.errors import ConfigError, ModelLoadError
from sdlab.training.config import TrainingConfig
from sdlab.training.loop import Trainer
from sdlab.training.methods.finetune import FineTune, FineTuneOptions
from sdlab.training.methods.vae_decoder import VaeDecoder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from sdlab.world.data import export_folder

    return export_folder(tmp_path_factory.mktemp("vae") / "data", 2, seed=5)   # one batch of 2: every step sees it


@pytest.fixture(scope="module")
def tuned_vae(tiny_model_dir, data, tmp_path_factory):
    """(the trainer, the saved OUTPUT/vae folder) of a 3-step decoder fine-tune."""
    out = tmp_path_factory.mktemp("vae-run") / "out"
    method = VaeDecoder()
    trainer = Trainer(_cfg(method, tiny_model_dir, data, out, max_steps=3, learning_rate=1e-2), method)
    result = trainer.run()
    return trainer, result


def _cfg(method, model, data, out, **kw):
    kw = {"checkpoint_every": 100, **kw}
    return TrainingConfig(method=method.name, data_dir=str(data), output_dir=str(out), model=str(model),
                          device="cpu", batch_size=2, options=method.options, **kw)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_the_decoder_run_card_says_how_to_use_it(tuned_vae):
    out = tuned_vae[1].saved[0].parent
    card = (out / "README.md").read_text()
    assert "| `vae` | diffusers AutoencoderKL folder | - |" in card and f"--vae {out / 'vae'}" in card


def test_only_the_decoder_trains_and_the_loss_falls(tiny_model_dir, tuned_vae):
    from diffusers import AutoencoderKL

    from sdlab.pipeline import Pipeline

    trainer, result = tuned_vae
    assert result.saved == [trainer.out / "vae"]
    assert sorted(p.name for p in result.saved[0].iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert {k.split(".")[1] for k in trainer.method.named_trainable()} == {"decoder", "post_quant_conv"}
    tuned = AutoencoderKL.from_pretrained(result.saved[0])
    base = Pipeline.load(tiny_model_dir, device="cpu").c
    assert _same(tuned.encoder, base.vae.encoder) and _same(tuned.quant_conv, base.vae.quant_conv)
    assert not _same(tuned.decoder, base.vae.decoder)
    assert _same(trainer.method.c.unet, base.unet)
    assert result.losses[-1] < result.losses[0]


def test_finetune_can_train_the_decoder_too(tiny_model_dir, data, tmp_path):
    from sdlab.pipeline import Pipeline

    method = FineTune(FineTuneOptions(train_vae_decoder=True))
    trainer = Trainer(_cfg(method, tiny_model_dir, data, tmp_path / "ft", max_steps=1, learning_rate=1e-3), method)
    batch = trainer.micro_batch(0)
    with torch.no_grad():
        both = method.loss(batch).item()
        method.train_vae_decoder = False
        unet_only = method.loss(batch).item()
        method.train_vae_decoder = True
        assert both == pytest.approx(unet_only + method.decoder_loss(batch.pixels).item(), rel=1e-5)
    trainer.run()
    saved, base = Pipeline.load(tmp_path / "ft" / "model", device="cpu").c, Pipeline.load(tiny_model_dir, device="cpu").c
    assert not _same(saved.vae.decoder, base.vae.decoder) and not _same(saved.unet, base.unet)
    assert _same(saved.vae.encoder, base.vae.encoder)


def test_resume_keeps_the_decoder_setting(capsys, tiny_model_dir, data, tmp_path):
    from sdlab.cli.main import main

    args = ["train", "finetune", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
            str(tmp_path / "run"), "--max-steps", "1", "--device", "cpu"]
    assert main(args + ["--train-vae-decoder"]) == 0
    capsys.readouterr()
    assert main(args + ["--max-steps", "2", "--resume", "latest"]) == 2
    assert "train_vae_decoder True -> False" in capsys.readouterr().err


def test_a_swapped_vae_is_used_and_named_in_infotext(tiny_model_dir, tuned_vae, tmp_path):
    from sdlab.config import GenerationConfig
    from sdlab.evaluate.apply import load_artifact
    from sdlab.models.hashing import sha256_file
    from sdlab.pipeline import Pipeline

    folder = tuned_vae[1].saved[0]
    swapped = Pipeline.load(tiny_model_dir, device="cpu", vae=folder)
    base = Pipeline.load(tiny_model_dir, device="cpu")
    assert not _same(swapped.c.vae.decoder, base.c.vae.decoder)
    gen = GenerationConfig("a red circle", seed=1, steps=2)
    a, b = swapped.generate(gen), base.generate(gen)
    assert a.images[0].tobytes() != b.images[0].tobytes()
    digest = sha256_file(folder / "diffusion_pytorch_model.safetensors")[:10]
    assert f"VAE hash: {digest}, VAE: out/vae" in a.infotexts[0]
    assert "VAE" not in b.infotexts[0]
    assert a.settings[0]["vae"] == {"name": "out/vae", "hash": digest} and "vae" not in b.settings[0]
    assert _same(load_artifact(tiny_model_dir, folder).c.vae, swapped.c.vae)       # eval's artifact loader


def test_set_vae_switches_and_switches_back(tiny_model_dir, tuned_vae, tmp_path):
    from sdlab.config import GenerationConfig
    from sdlab.pipeline import Pipeline

    folder = tuned_vae[1].saved[0]
    gen = GenerationConfig("a red circle", seed=1, steps=2)
    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    own = pipe.generate(gen)
    pipe.set_vae(folder)
    swapped = pipe.generate(gen)
    loaded = Pipeline.load(tiny_model_dir, device="cpu", vae=folder).generate(gen)
    assert swapped.images[0].tobytes() == loaded.images[0].tobytes() != own.images[0].tobytes()
    assert swapped.infotexts == loaded.infotexts and "VAE: out/vae" in swapped.infotexts[0]
    module = pipe.c.vae
    pipe.set_vae(None)
    back = pipe.generate(gen)
    assert back.images[0].tobytes() == own.images[0].tobytes() and back.infotexts == own.infotexts
    pipe.set_vae(folder)
    assert pipe.c.vae is module                                      # kept loaded: switching back is free
    with pytest.raises(ModelLoadError, match="does not exist"):
        pipe.set_vae(tmp_path / "nope")
    assert pipe.c.vae is module                                      # a failed switch changes nothing


@pytest.mark.parametrize("layout", ["ldm", "ldm-prefixed", "diffusers"])
def test_single_vae_files_load(tiny_model_dir, tuned_vae, tmp_path, layout):
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from sdlab.models.ldm_export import VAE_PREFIX, vae_to_original
    from sdlab.pipeline import Pipeline

    vae = AutoencoderKL.from_pretrained(tuned_vae[1].saved[0])
    state = vae.state_dict()
    if layout != "diffusers":
        state = vae_to_original(state, len(vae.config.block_out_channels))
        if layout == "ldm":                                   # A1111 VAE files carry no prefix
            state = {k[len(VAE_PREFIX):]: v for k, v in state.items()}
    path = tmp_path / "my-vae.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    pipe = Pipeline.load(tiny_model_dir, device="cpu", vae=path)
    assert _same(pipe.c.vae, vae)
    assert pipe.c.extra["vae"]["name"] == "my-vae.safetensors"


def test_bad_vaes_are_refused_clearly(tiny_model_dir, tmp_path):
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from sdlab.pipeline import Pipeline

    def load(path):
        return Pipeline.load(tiny_model_dir, device="cpu", vae=path)

    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="holds a UNet2DConditionModel, not an AutoencoderKL"):
        load(tiny_model_dir / "unet")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="not a VAE file: give a .safetensors, .pt or .ckpt file"):
        load(tmp_path / "notes.txt")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ModelLoadError, match="holds a clip model, not an AutoencoderKL"):
        load(tmp_path / "clip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="is not a VAE"):
        load(tmp_path / "empty")
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 16, 3, 3)}, str(tmp_path / "unet.safetensors"))
    with pytest.raises(ModelLoadError, match="no decoder weights"):
        load(tmp_path / "unet.safetensors")
    other = AutoencoderKL(latent_channels=8, block_out_channels=(8, 16), norm_num_groups=4,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    other.save_pretrained(tmp_path / "vae8")
    with pytest.raises(ModelLoadError, match="8 latent channels at 1/2 size, the model's VAE has 4 at 1/2"):
        load(tmp_path / "vae8")
    assert Pipeline.load(tiny_model_dir, device="cpu", vae=tiny_model_dir).c.extra["vae"]["name"] == "tiny-sd/vae"


def test_generate_cli_takes_vae(capsys, tiny_model_dir, tuned_vae, tmp_path):
    from PIL import Image

    from sdlab.cli.main import main

    assert main(["generate", "a red circle", "--model", str(tiny_model_dir), "--vae", str(tuned_vae[1].saved[0]),
                 "--steps", "2", "--seed", "3", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    png = next((tmp_path / "o").rglob("*.png"))
    assert "VAE: out/vae" in Image.open(png).info["parameters"]
    assert main(["generate", "a red circle", "--model", str(tiny_model_dir), "--vae", str(tmp_path / "none"),
                 "--steps", "2", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "VAE path" in capsys.readouterr().err


def test_info_describes_vae_folders_and_files(capsys, tiny_model_dir, tuned_vae, tmp_path):
    from safetensors.torch import save_file

    from sdlab.cli.main import main
    from sdlab.models.vae_file import describe_vae

    folder = tuned_vae[1].saved[0]
    d = describe_vae(folder)
    assert d["kind"] == "VAE (diffusers layout)" and d["latent_channels"] == 4 and d["downsampling"] == 2
    assert 0 < d["decoder_params"] < d["parameters"]
    assert main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hash"] == d["hash"]
    save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(16, 4, 3, 3)}, str(tmp_path / "v.safetensors"))
    assert describe_vae(tmp_path / "v.safetensors")["kind"] == "VAE (LDM layout)"
    assert describe_vae(tiny_model_dir / "unet") is None and describe_vae(tiny_model_dir) is None


def test_info_and_load_take_an_a1111_pt_vae(tiny_model_dir, tuned_vae, tmp_path):
    """A1111's `*.vae.pt`: {"state_dict": LDM keys}, read with weights_only=True."""
    from diffusers import AutoencoderKL

    from sdlab.models.ldm_export import VAE_PREFIX, vae_to_original
    from sdlab.models.vae_file import describe_vae
    from sdlab.pipeline import Pipeline

    vae = AutoencoderKL.from_pretrained(tuned_vae[1].saved[0])
    state = {k[len(VAE_PREFIX):]: v for k, v in vae_to_original(vae.state_dict(), 2).items()}
    path = tmp_path / "mine.vae.pt"
    torch.save({"state_dict": state}, path)
    assert describe_vae(path)["kind"] == "VAE (LDM layout)"
    assert _same(Pipeline.load(tiny_model_dir, device="cpu", vae=path).c.vae, vae)


def test_decoder_run_resumes_bit_exactly(tiny_model_dir, data, tmp_path):
    """Two steps straight equal one step, a checkpoint, and one resumed step (decoder weights and all)."""
    from diffusers import AutoencoderKL

    def run(out, steps, resume=None):
        method = VaeDecoder()
        cfg = _cfg(method, tiny_model_dir, data, out, max_steps=steps, learning_rate=1e-2, checkpoint_every=1)
        Trainer(cfg, method).run(resume)

    run(tmp_path / "straight", 2)
    run(tmp_path / "split", 1)
    run(tmp_path / "split", 2, resume="latest")
    a, b = (AutoencoderKL.from_pretrained(tmp_path / name / "vae") for name in ("straight", "split"))
    assert _same(a, b)


def test_decoder_trains_on_a_folder_without_captions(tiny_model_dir, data, tmp_path):
    import shutil

    images = tmp_path / "images"
    images.mkdir()
    for png in sorted(data.glob("*.png")):
        shutil.copy(png, images / png.name)
    method = VaeDecoder()
    result = Trainer(_cfg(method, tiny_model_dir, images, tmp_path / "out", max_steps=1), method).run()
    assert result.saved == [tmp_path / "out" / "vae"]
    with pytest.raises(ConfigError, match="has no captions"):           # the other methods still need captions
        method = FineTune()
        Trainer(_cfg(method, tiny_model_dir, images, tmp_path / "ft", max_steps=1), method)
