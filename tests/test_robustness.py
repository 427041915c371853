"""Hostile or broken input gives one clear line, never a hang, a traceback or a silent black image."""

import os
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image, ImageFile

from sdlab.cli.main import main
from sdlab.errors import ImageReadError
from sdlab.io.images import MAX_PIXELS, load_image


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdlab: error: "), err
    return lines[0]


def png_header(path, width: int, height: int):
    """A PNG that declares width x height 1-bit pixels but holds almost no data: what a
    decompression bomb looks like before it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# --- one safe image loader -------------------------------------------------------------------

def test_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    Image.new("P", (9000, 9000)).save(bomb)            # 81 MP in about 10 KB
    assert bomb.stat().st_size < 100_000 and 9000 * 9000 > MAX_PIXELS

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageReadError, match=r"9000x9000 is 81000000 pixels, over the limit of 67108864"):
        load_image(bomb)


def test_special_files_are_refused(tmp_path):
    with pytest.raises(ImageReadError, match=r"cannot read image '/dev/null': it is a device, not a regular file"):
        load_image("/dev/null")
    with pytest.raises(ImageReadError, match="it is a folder"):
        load_image(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_img2img_on_a_fifo_fails_at_once(tmp_path):
    fifo = tmp_path / "in.png"
    os.mkfifo(fifo)
    code = "import sys; from sdlab.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "img2img", str(fifo), "a red circle", "--out",
                           str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert one_line_error(proc.stderr) == f"sdlab: error: cannot read init image '{fifo}': it is a FIFO, not a regular file"
    assert not (tmp_path / "o").exists()


def test_img2img_refuses_a_bomb_before_loading_the_model(capsys, tmp_path):
    bomb = png_header(tmp_path / "big.png", 9000, 9000)
    code, out, err = run(capsys, "img2img", bomb, "a red circle", "--model", tmp_path / "no-model", "--out",
                         tmp_path / "o")
    assert code == 2 and out == ""
    assert "over the limit of 67108864 (decompression bomb guard)" in one_line_error(err)


@pytest.mark.parametrize("side", [9000, 20000])      # under and over PIL's own DecompressionBombError
def test_world_read_refuses_a_bomb(capsys, tmp_path, side):
    code, out, err = run(capsys, "world", "read", png_header(tmp_path / "bomb.png", side, side))
    assert code == 2 and out == ""
    assert f"{side * side} pixels, over the limit of 67108864 (decompression bomb guard)" in one_line_error(err)


# --- error texts ------------------------------------------------------------------------------

class _Shape:
    """A custom class: what a pickle holding Python objects (and maybe code) looks like."""

    def __init__(self):
        self.sides = 3


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_with_an_object_is_refused_without_unsafe_advice(capsys, tmp_path, suffix):
    import torch

    bad = tmp_path / f"obj{suffix}"
    torch.save({"string_to_param": {"*": torch.zeros(1, 4)}, "extra": _Shape()}, bad)
    argv = ["generate", "x", "--model", bad, "--out", tmp_path / "o"] if suffix == ".ckpt" else ["info", bad]
    code, out, err = run(capsys, *argv)
    line = one_line_error(err)
    assert code == 2 and out == ""
    assert line == (f"sdlab: error: refusing to load a pickle that holds Python objects: '{bad}' holds "
                    f"{__name__}._Shape (only tensors are read from .ckpt/.pt/.bin files; convert it to safetensors)")
    assert "weights_only" not in err


def _lora_like(path, keys):
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(2, 8) if k.endswith("weight") else torch.tensor(2.0) for k in keys}, str(path))
    return path


@pytest.mark.parametrize("keys", [
    ["down_blocks.0.proj_in.lora_down.weight", "down_blocks.0.proj_in.lora_up.weight", "down_blocks.0.proj_in.alpha"],
    [f"lycoris_unet_block_{i}.lora_{p}.weight" for i in range(12) for p in ("down", "up")],   # 24 tensors
    ["encoder.proj.weight", "encoder.proj.bias"],
])
def test_a_file_of_unknown_layout_is_not_called_an_embedding(capsys, tmp_path, keys):
    src = _lora_like(tmp_path / "weird.safetensors", keys)
    for argv in (["info", src], ["convert", src, tmp_path / "out.safetensors", "--to", "kohya"],
                 ["convert", src, tmp_path / "out.safetensors", "--to", "a1111"]):
        code, out, err = run(capsys, *argv)
        line = one_line_error(err)
        assert code == 2 and out == "", argv
        assert f"'{src}' is an unrecognised file" in line and "embedding" not in line.split("Recognised:")[0], argv
        assert "Recognised: LoRA in the diffusers/peft layout" in line and "kohya layout" in line
    assert not (tmp_path / "out.safetensors").exists()


def _model_copy(src, dst, index=None, **unet_config):
    import json
    import shutil

    shutil.copytree(src, dst)
    for path, changes in ((dst / "model_index.json", index or {}), (dst / "unet" / "config.json", unet_config)):
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return dst


@pytest.mark.parametrize("index, unet_config, message", [
    ({"unet": ["diffusers", "AutoModel"]}, {},          # diffusers' AutoModel reads model_index.json again, forever
     "model_index.json names 'AutoModel' for 'unet': it must name the unet's own class"),
    ({}, {"sample_size": "big"}, "unet/config.json': field 'sample_size' must be a positive integer, got 'big'"),
    ({}, {"layers_per_block": [1, 1, 1]},
     "unet/config.json': field 'layers_per_block' has 3 entries; it needs one per block (2, as block_out_channels)"),
    ({}, {"norm_num_groups": 7}, "unet/config.json': field 'norm_num_groups' (7) must divide every block_out_channels"),
])
def test_a_malformed_model_config_names_file_and_field(capsys, tmp_path, tiny_model_dir, index, unet_config,
                                                       message):
    model = _model_copy(tiny_model_dir, tmp_path / "m", index, **unet_config)
    code, out, err = run(capsys, "info", model)
    assert code == 2 and out == ""
    line = one_line_error(err)
    assert message in line and "recursion" not in line


def test_seed_range_holds_for_the_whole_batch(capsys, tmp_path, tiny_model_dir):
    from sdlab.config import GenerationConfig
    from sdlab.errors import ConfigError

    code, out, err = run(capsys, "generate", "x", "--seed", 4294967295, "--batch-size", 2, "--model",
                         tmp_path / "not-loaded", "--out", tmp_path / "o")
    assert code == 2 and out == "" and not (tmp_path / "o").exists()
    assert one_line_error(err) == ("sdlab: error: seed must be between 0 and 4294967294 for 2 images (batch_size x "
                                   "batch_count), as image i uses seed + i and seeds are below 2^32; got 4294967295")
    with pytest.raises(ConfigError, match="between 0 and 4294967292 for 4 images"):
        GenerationConfig("x", seed=4294967293, batch_size=2, batch_count=2)
    code, out, _ = run(capsys, "generate", "x", "--seed", 4294967294, "--batch-size", 2, "--steps", 1, "--model",
                       tiny_model_dir, "--out", tmp_path / "o", "--no-grid")
    assert code == 0 and [p.rsplit("/", 1)[1] for p in out.split()] == ["00000-4294967294.png", "00001-4294967295.png"]


@pytest.mark.parametrize("n", [100000, 65, 1])
def test_mix_sweep_is_bounded(capsys, tmp_path, n):
    code, out, err = run(capsys, "mix", "a red {}", "circle", "square", "--sweep", n, "--model", tmp_path / "no-model",
                         "--out", tmp_path / "o")
    assert code == 2 and out == ""
    assert one_line_error(err) == f"sdlab: error: --sweep must be between 2 and 64 mixes, got {n}"


def test_low_memory_degrades_to_what_the_cpu_supports(capsys, tmp_path, tiny_model_dir):
    import torch

    from sdlab.models.speed import SpeedOptions
    from sdlab.pipeline import Pipeline

    if torch.cuda.is_available():
        pytest.skip("CUDA present: offload applies")
    assert SpeedOptions.low_memory() == SpeedOptions(attention_slicing=True, vae_slicing=True, vae_tiling=True)
    pipe = Pipeline.load(tiny_model_dir, speed=SpeedOptions.low_memory())
    assert pipe.c.vae.use_tiling and pipe.c.vae.use_slicing
    assert {type(p).__name__ for p in pipe.c.unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    code, out, err = run(capsys, "generate", "a red circle", "--low-memory", "--steps", 2, "--seed", 1, "--model",
                         tiny_model_dir, "--out", tmp_path / "o")
    assert code == 0 and out.split()[0].endswith("00000-1.png")
    notes = [ln for ln in err.splitlines() if ln.startswith("sdlab: note:")]
    assert notes == ["sdlab: note: --low-memory without CUDA: attention/VAE slicing and VAE tiling only "
                     "(model CPU offload needs a CUDA device)"]


# --- NaN / inf never reach a PNG ----------------------------------------------------------------

def test_nan_embedding_stops_sampling_with_one_line(capsys, tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import save_file

    emb = tmp_path / "nan.safetensors"
    save_file({"<nan>": torch.full((1, 32), float("nan"))}, str(emb))
    code, out, err = run(capsys, "generate", "a <nan> circle", "--embedding", emb, "--steps", 3, "--seed", 1,
                         "--model", tiny_model_dir, "--out", tmp_path / "o")
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1] == ("sdlab: error: the sampler produced non-finite latents (NaN/inf) at step 1 "
                                            "of 3: check the weights of embedding '<nan>'")
    assert "Traceback" not in err and not list((tmp_path / "o").glob("*.png"))


def test_a_nan_model_weight_is_named_at_its_step(tiny_model_dir):
    import torch

    from sdlab.config import GenerationConfig
    from sdlab.errors import NonFiniteError
    from sdlab.pipeline import Pipeline, _to_pil

    pipe = Pipeline.load(tiny_model_dir)
    with torch.no_grad():
        pipe.c.unet.conv_out.bias[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite latents \(NaN/inf\) at step 1 of 2: check the "
                                             r"LoRA/embedding/model weights$"):
        pipe.generate(GenerationConfig("a red circle", steps=2, seed=1, sampler="Euler"))
    with pytest.raises(NonFiniteError, match="would come out black; nothing was written"):
        _to_pil(torch.full((1, 3, 2, 2), float("nan")))


def test_a_lora_that_makes_weights_non_finite_is_not_merged(tmp_path, tiny_model_dir):
    import torch

    from sdlab.errors import ConfigError
    from sdlab.models import lora
    from sdlab.pipeline import Pipeline

    pipe = Pipeline.load(tiny_model_dir)
    modules = lora.model_modules(pipe.c.unet, pipe.c.text_encoder)
    names = [n for n, m in modules.items() if n.startswith("unet.") and isinstance(m, torch.nn.Linear)][:2]
    layers = {}
    for name, up_value in zip(names, (0.5, float("nan"))):      # the second layer is broken
        w = modules[name].weight
        layers[name] = lora.LoraLayer(torch.full((2, w.shape[1]), 0.5), torch.full((w.shape[0], 2), up_value), 2.0)
    path = lora.write(tmp_path / "nan.safetensors", layers, "kohya")
    before = {k: v.clone() for k, v in pipe.c.unet.state_dict().items()}
    with pytest.raises(ConfigError, match=rf"LoRA layer '{names[1]}' at scale 1 makes the weights non-finite"):
        lora.apply_lora(pipe, path)
    assert pipe.loras == []
    after = pipe.c.unet.state_dict()         # the first layer taken out again, the second never merged
    assert all(torch.isfinite(v).all() and torch.allclose(before[k], v, atol=1e-6) for k, v in after.items())


def test_vae_overflowing_in_low_precision_is_decoded_again_in_fp32(monkeypatch, tiny_model_dir):
    import numpy as np
    import torch

    from sdlab.config import GenerationConfig
    from sdlab.errors import NonFiniteError
    from sdlab.pipeline import Pipeline

    config = GenerationConfig("a red circle", steps=2, seed=3, sampler="Euler")
    reference = np.asarray(Pipeline.load(tiny_model_dir).generate(config).images[0], dtype=int)
    pipe = Pipeline.load(tiny_model_dir)
    vae = pipe.c.vae.to(torch.bfloat16)
    decode, dtypes = vae.decode, []

    def overflows_in_bf16(z, *args, **kwargs):     # as an SD VAE overflows in fp16 on large activations
        dtypes.append(vae.dtype)
        out = decode(z, *args, **kwargs)
        if vae.dtype != torch.float32:
            out.sample.fill_(float("inf"))
        return out

    monkeypatch.setattr(vae, "decode", overflows_in_bf16)
    image = np.asarray(pipe.generate(config).images[0], dtype=int)
    assert dtypes == [torch.bfloat16, torch.float32] and vae.dtype == torch.bfloat16   # back in its own dtype
    assert np.abs(image - reference).mean() < 2       # the fp32 decode of bf16-rounded weights
    monkeypatch.setattr(vae, "decode", lambda z, *a, **k: type("Out", (), {"sample": z[:, :3] * float("nan")})())
    with pytest.raises(NonFiniteError, match=r"the VAE decoder turned finite latents into non-finite pixels "
                                             r"\(NaN/inf\), in fp32 too"):
        pipe.generate(config)
