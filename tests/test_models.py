"""Tests for sdlab.models: local loading of diffusers folders and SD 1.x/2.x single files."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from sdlab.errors import ConfigError, ModelLoadError
from sdlab.models import (clip_tokenizer, load_pipeline_components, model_hash, resolve_device,
                          resolve_dtype, write_clip_tokenizer_files)
from sdlab.models.checkpoint import detect_family, probe_v_prediction
from sdlab.models.ldm_export import original_state_dict
from sdlab.models.single_file import CONFIG_ROOT, read_json


# --- tiny random pipelines ------------------------------------------------------------------

def _tiny_pipeline(family: str, seed: int = 0):
    """A random-weight SD-shaped pipeline: real CLIP vocabulary, tiny UNet/VAE/text encoder."""
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    sd2 = family == "sd2"
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 2, use_linear_projection=sd2)
    vae = AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        hidden_act="gelu" if sd2 else "quick_gelu"))
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          prediction_type="v_prediction" if sd2 else "epsilon")
    tok = clip_tokenizer(pad_token="!" if sd2 else "<|endoftext|>")
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{family: (pipeline, diffusers folder, single .safetensors in the original layout)}."""
    from safetensors.torch import save_file

    out = {}
    for family in ("sd1", "sd2"):
        root = tmp_path_factory.mktemp(family)
        pipe = _tiny_pipeline(family)
        pipe.save_pretrained(root / "tiny")
        single = root / "tiny.safetensors"
        save_file(original_state_dict(pipe.unet, pipe.vae, pipe.text_encoder, family), str(single))
        out[family] = (pipe, root / "tiny", single)
    return out


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].float(), sb[key].float()), key


def _assert_same_components(pipe, comps):
    for name in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(pipe, name), getattr(comps, name))


# --- devices and dtypes ---------------------------------------------------------------------

def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    for bad in ("gpu", "tpu", "cpu:1", "cuda:x", "mps:0"):
        with pytest.raises(ConfigError, match="allowed: auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    if torch.cuda.is_available():
        assert resolve_device(None).type == "cuda"
    else:
        assert resolve_device(None).type in ("cpu", "mps")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_resolve_dtype():
    assert resolve_dtype(None, "cpu") is torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) is torch.float16
    assert resolve_dtype(None, "mps") is torch.float16
    assert resolve_dtype(None, None) is torch.float32
    assert resolve_dtype("bf16", "cuda") is torch.bfloat16
    assert resolve_dtype("FP16") is torch.float16
    assert resolve_dtype("float32", "cuda") is torch.float32
    assert resolve_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ConfigError, match="allowed: auto, fp32, fp16, bf16"):
        resolve_dtype("fp8")
    with pytest.raises(ConfigError):
        resolve_dtype(torch.int8)


# --- tokenizer ------------------------------------------------------------------------------

def test_clip_tokenizer_known_ids(tmp_path):
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A  PHOTO of a Cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[3:] == [49407] * 74
    sd2 = clip_tokenizer(pad_token="!")
    assert sd2.pad_token_id == 0
    assert sd2("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368,
                                                                           49407, 0, 0]
    folder = write_clip_tokenizer_files(tmp_path / "tok")
    from transformers import CLIPTokenizer
    again = CLIPTokenizer.from_pretrained(str(folder))
    assert again("a photo of a cat").input_ids == tok("a photo of a cat").input_ids
    assert len(json.loads((folder / "vocab.json").read_text())) == 49408
    assert len((folder / "merges.txt").read_text().splitlines()) == 1 + 48894


# --- shipped configs ------------------------------------------------------------------------

@pytest.mark.parametrize("name,unet_params,text_params", [
    ("sd15", 859_520_964, 123_060_480),
    ("sd21-base", 865_910_724, 340_387_840),
    ("sd21-v", 865_910_724, 340_387_840),
])
def test_shipped_configs_have_public_sizes(name, unet_params, text_params):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    d = CONFIG_ROOT / name
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(read_json(d / "unet" / "config.json"))
        vae = AutoencoderKL.from_config(read_json(d / "vae" / "config.json"))
        text_cfg = CLIPTextConfig.from_dict(read_json(d / "text_encoder" / "config.json"))
        text = CLIPTextModel(text_cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(text)) == (unet_params, 83_653_863, text_params)
    assert vae.config.scaling_factor == 0.18215
    sched = read_json(d / "scheduler" / "scheduler_config.json")
    assert sched["prediction_type"] == ("v_prediction" if name == "sd21-v" else "epsilon")


# --- diffusers folders ----------------------------------------------------------------------

def test_load_diffusers_folder(tiny):
    pipe, folder, _ = tiny["sd1"]
    comps = load_pipeline_components(folder)
    _assert_same_components(pipe, comps)
    assert comps.prediction_type == "epsilon" and comps.name == "tiny"
    assert comps.source == folder and comps.scheduler_config["_class_name"] == "DDIMScheduler"
    assert comps.model_hash == model_hash(folder)
    assert comps.tokenizer("a photo of a cat").input_ids[:3] == [49406, 320, 1125]
    assert comps.dtype == torch.float32 and comps.device == torch.device("cpu")


def test_load_folder_dtype_and_prediction_override(tiny):
    pipe, folder, _ = tiny["sd2"]
    comps = load_pipeline_components(folder, dtype="bf16", device="cpu")
    assert comps.prediction_type == "v_prediction"
    for module in (comps.unet, comps.vae, comps.text_encoder):
        assert next(module.parameters()).dtype == torch.bfloat16
    comps = load_pipeline_components(folder, prediction_type="epsilon")
    assert comps.prediction_type == comps.scheduler_config["prediction_type"] == "epsilon"


def test_loaded_components_generate_like_original(tiny):
    pipe, folder, single = tiny["sd1"]
    kwargs = dict(prompt="a red circle", num_inference_steps=2, height=16, width=16,
                  output_type="np", guidance_scale=3.0)
    ref = pipe(generator=torch.Generator().manual_seed(3), **kwargs).images
    for comps in (load_pipeline_components(folder),
                  load_pipeline_components(single, config=folder)):
        got = comps.to_pipeline()(generator=torch.Generator().manual_seed(3), **kwargs).images
        np.testing.assert_allclose(got, ref, atol=1e-5)


# --- single files ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_load_single_safetensors(tiny, family):
    pipe, folder, single = tiny[family]
    comps = load_pipeline_components(single, config=folder)
    assert comps.family == family and comps.name == "tiny"
    _assert_same_components(pipe, comps)
    ids = comps.tokenizer("a cat", padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(comps.text_encoder(ids)[0], pipe.text_encoder(ids)[0])
    assert comps.model_hash == hashlib.sha256(single.read_bytes()).hexdigest()[:10]


def test_single_file_family_detection(tiny):
    from safetensors.torch import load_file

    assert detect_family(load_file(str(tiny["sd1"][2]))) == "sd1"
    state = load_file(str(tiny["sd2"][2]))
    assert detect_family(state) == "sd2"
    # SD 2.x files carry a 3rd (here) OpenCLIP layer that SD does not use: it is dropped
    assert any(".resblocks.2." in k for k in state)


def test_load_ckpt_with_weights_only(tiny, tmp_path):
    from safetensors.torch import load_file

    pipe, folder, single = tiny["sd1"]
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(single)), "global_step": 7, "epoch": 1}, ckpt)
    comps = load_pipeline_components(ckpt, config=folder, dtype="fp16")
    assert comps.name == "model" and comps.dtype == torch.float16
    _assert_same_weights(pipe.unet.half(), comps.unet)
    pipe.unet.float()


class _Evil:
    def __reduce__(self):
        return (exec, ("import sdlab; sdlab.PWNED = True",))


def test_ckpt_with_code_is_refused(tiny, tmp_path):
    import sdlab

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Evil()}, bad)
    with pytest.raises(ModelLoadError, match=r"refusing to load a pickle that holds Python objects: .* holds exec") as err:
        load_pipeline_components(bad)
    assert "weights_only" not in str(err.value)
    assert not hasattr(sdlab, "PWNED")


def test_sidecar_yaml_and_explicit_prediction_type(tiny, tmp_path):
    _, folder, single = tiny["sd1"]
    copy = tmp_path / "m.safetensors"
    shutil.copy(single, copy)
    assert load_pipeline_components(copy, config=folder).prediction_type == "epsilon"
    copy.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    comps = load_pipeline_components(copy, config=folder)
    assert comps.prediction_type == comps.scheduler_config["prediction_type"] == "v_prediction"
    assert load_pipeline_components(copy, config=folder,
                                    prediction_type="eps").prediction_type == "epsilon"
    with pytest.raises(ConfigError, match="allowed: epsilon, v_prediction"):
        load_pipeline_components(copy, config=folder, prediction_type="x0")


def test_single_file_tokenizer_fallbacks(tiny, tmp_path, monkeypatch):
    import sdlab.models.loader as loader

    _, folder, single = tiny["sd2"]
    config = tmp_path / "config"
    shutil.copytree(folder, config, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.rmtree(config / "tokenizer")
    comps = load_pipeline_components(single, config=config)  # built from the shipped BPE list
    assert comps.tokenizer.pad_token == "!" and len(comps.tokenizer) == 49408
    monkeypatch.setattr(loader, "BPE_FILE", tmp_path / "gone.txt.gz")
    with pytest.raises(ModelLoadError, match="pass tokenizer=PATH"):
        load_pipeline_components(single, config=config)
    tok_dir = write_clip_tokenizer_files(tmp_path / "tok", pad_token="!")
    comps = load_pipeline_components(single, config=config, tokenizer=tok_dir)
    assert comps.tokenizer.pad_token_id == 0
    with pytest.raises(ModelLoadError, match="cannot load tokenizer"):
        load_pipeline_components(single, config=config, tokenizer=tmp_path / "no-tok")


class _FakeUNet(torch.nn.Module):
    def __init__(self, offset):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.offset = offset
        self.config = type("C", (), {"in_channels": 4})()

    def forward(self, x, t, encoder_hidden_states):
        assert int(t[0]) == 999 and encoder_hidden_states.shape[-1] == 1024
        return type("O", (), {"sample": x + self.offset + self.w})()


def test_probe_v_prediction_decision():
    assert probe_v_prediction(_FakeUNet(-2.0), 1024) is True
    assert probe_v_prediction(_FakeUNet(0.05), 1024) is False


# --- errors ---------------------------------------------------------------------------------

def test_load_errors(tiny, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pipeline_components(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json is missing"):
        load_pipeline_components(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(tiny["sd1"][1], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="missing its 'vae/' subfolder"):
        load_pipeline_components(broken)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="unknown model file type '.txt'"):
        load_pipeline_components(tmp_path / "notes.txt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00garbage-garbage-")
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        load_pipeline_components(tmp_path / "bad.safetensors")
    (tmp_path / "bad.ckpt").write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(ModelLoadError, match="not a valid .ckpt"):
        load_pipeline_components(tmp_path / "bad.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(b"\x80\x04\x95\x10\x00")  # truncated pickle
    with pytest.raises(ModelLoadError, match="not a valid .ckpt"):
        load_pipeline_components(tmp_path / "cut.ckpt")


def test_state_dict_that_is_not_sd(tiny, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(ModelLoadError, match="matches neither SD 1.x nor SD 2.x"):
        load_pipeline_components(other)
    # right layout, wrong width: the shipped SD 1.5 config wants 768-wide cross-attention
    with pytest.raises(ModelLoadError, match="matches neither SD 1.x nor SD 2.x: cross-attention"):
        load_pipeline_components(tiny["sd1"][2])
    # right layout, wrong architecture config: every mismatch is reported, nothing half-loaded
    with pytest.raises(ModelLoadError, match="does not fit the .* architecture"):
        load_pipeline_components(tiny["sd1"][2], config=tiny["sd2"][1])


def test_model_hash(tiny, tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(b"abc" * 1000).hexdigest()[:10]
    assert model_hash(f) == model_hash(f) == expected
    f.write_bytes(b"abd" * 1000)
    assert model_hash(f) != expected
    folder = tiny["sd1"][1]
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert model_hash(folder) == hashlib.sha256(unet_file.read_bytes()).hexdigest()[:10]
    assert not any(p.name.endswith((".sha256", ".hash")) for p in folder.rglob("*"))
    with pytest.raises(ModelLoadError):
        model_hash(tmp_path / "missing.ckpt")


# --- full-size SD 1.5 / 2.1 architectures with random weights (slow) --------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name,family,pred", [("sd15", "sd1", None),
                                              ("sd21-base", "sd2", "epsilon"),
                                              ("sd21-v", "sd2", "v_prediction")])
def test_full_size_single_file_round_trip(tmp_path, name, family, pred):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    d = CONFIG_ROOT / name
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(read_json(d / "unet" / "config.json")).half()
    vae = AutoencoderKL.from_config(read_json(d / "vae" / "config.json")).half()
    text = CLIPTextModel(CLIPTextConfig.from_dict(read_json(d / "text_encoder" / "config.json")))
    text = text.half()
    path = tmp_path / f"{name}.safetensors"
    save_file(original_state_dict(unet, vae, text, family), str(path))
    comps = load_pipeline_components(path, dtype="fp16", device="cpu", prediction_type=pred)
    assert comps.family == family and comps.prediction_type == (pred or "epsilon")
    assert comps.extra["config_dir"].endswith(name)
    assert comps.unet.config.sample_size == (96 if name == "sd21-v" else 64)
    for a, b in ((unet, comps.unet), (vae, comps.vae), (text, comps.text_encoder)):
        _assert_same_weights(a, b)
    assert comps.tokenizer.pad_token == ("!" if family == "sd2" else "<|endoftext|>")
    if family == "sd2":  # without a flag or sidecar, the behavioural probe decides
        auto = load_pipeline_components(path, dtype="fp16", device="cpu")
        assert auto.prediction_type in ("epsilon", "v_prediction")
        assert auto.unet.config.sample_size == (96 if auto.prediction_type == "v_prediction"
                                                else 64)
