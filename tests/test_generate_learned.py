"""`sdlab generate --lora FILE[:SCALE] --embedding FILE`: what `sdlab train` learned, applied
from the CLI and recorded in the image metadata (A1111's "Lora hashes" / "TI hashes")."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.cli.generate import lora_spec
from sdlab.cli.main import main
from sdlab.io.metadata import read_png_metadata
from sdlab.models.hashing import sha256_file


@pytest.fixture(scope="module")
def lora_file(tiny_model_dir, tmp_path_factory):
    from sdlab.training.config import TrainingConfig
    from sdlab.training.loop import train
    from sdlab.training.methods.lora import LoRA, LoraOptions
    from sdlab.world.data import export_folder

    root = tmp_path_factory.mktemp("lora-cli")
    data = export_folder(root / "data", 4, seed=4)
    method = LoRA(LoraOptions(rank=2, targets="all"))
    cfg = TrainingConfig(method="lora", data_dir=str(data), output_dir=str(root / "out"), model=str(tiny_model_dir),
                         max_steps=3, learning_rate=5e-2, checkpoint_every=100, device="cpu", options=method.options)
    train(cfg, method)
    return root / "out" / "lora_kohya.safetensors"


def generate(capsys, tiny_model_dir, out, *extra):
    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "3",
                 "--out", str(out), *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out.split(), captured.err


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_lora_changes_the_image_and_is_recorded(capsys, tiny_model_dir, tmp_path, lora_file):
    code, plain, _ = generate(capsys, tiny_model_dir, tmp_path / "plain")
    assert code == 0
    code, half, _ = generate(capsys, tiny_model_dir, tmp_path / "half", "--lora", f"{lora_file}:0.5")
    assert code == 0
    assert np.abs(pixels(half[0]) - pixels(plain[0])).max() > 0
    meta = read_png_metadata(half[0])
    digest = sha256_file(lora_file)[:12]
    assert meta["params"]["Lora hashes"] == f"lora_kohya: {digest}"
    assert meta["settings"]["loras"] == [{"name": "lora_kohya", "hash": digest, "scale": 0.5}]
    assert "Lora hashes" not in read_png_metadata(plain[0])["params"]


def test_lora_at_scale_zero_is_the_plain_model(capsys, tiny_model_dir, tmp_path, lora_file):
    _, plain, _ = generate(capsys, tiny_model_dir, tmp_path / "plain")
    _, zero, _ = generate(capsys, tiny_model_dir, tmp_path / "zero", "--lora", f"{lora_file}:0")
    assert np.abs(pixels(zero[0]) - pixels(plain[0])).max() <= 1


def test_embedding_token_draws_and_is_recorded(capsys, tiny_model_dir, tmp_path):
    from sdlab.text.embeddings import save_a1111

    from transformers import CLIPTextConfig

    dim = CLIPTextConfig.from_pretrained(tiny_model_dir / "text_encoder").hidden_size
    emb = save_a1111(tmp_path / "my-shape.safetensors", "my-shape", torch.randn(2, dim) * 0.3)
    code = main(["generate", "a red my-shape", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "3",
                 "--embedding", str(emb), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 0 and "token my-shape" in captured.err
    meta = read_png_metadata(captured.out.split()[0])
    digest = sha256_file(emb)[:12]
    assert meta["params"]["TI hashes"] == f"my-shape: {digest}"
    assert meta["settings"]["embeddings"] == [{"name": "my-shape", "hash": digest, "vectors": 2}]


@pytest.mark.parametrize("extra, message", [
    (["--lora", "/nonexistent/x.safetensors"], "LoRA file '/nonexistent/x.safetensors' does not exist"),
    (["--lora", "EMB:0.5"], "unknown LoRA keys"),
    (["--lora", "LORA:50"], "LoRA scale must be a number in [-10, 10], got 50.0"),
    (["--embedding", "LORA"], "is a LoRA file, not a textual-inversion embedding"),
    (["--embedding", "BAD"], "cannot read embedding file"),
    (["--lora", "BAD"], "cannot read LoRA file"),
])
def test_bad_files_are_one_line_errors(capsys, tiny_model_dir, tmp_path, lora_file, extra, message):
    from sdlab.text.embeddings import save_diffusers

    emb = save_diffusers(tmp_path / "learned_embeds.safetensors", {"<x>": torch.zeros(1, 8)})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    extra = [e.replace("EMB", str(emb)).replace("LORA", str(lora_file)).replace("BAD", str(bad)) for e in extra]
    code, out, err = generate(capsys, tiny_model_dir, tmp_path / "o", *extra)
    assert code == 2 and message in err and "Traceback" not in err and out == []


@pytest.mark.parametrize("spec, parsed", [
    ("a.safetensors", ("a.safetensors", 1.0)),
    ("a.safetensors:0.7", ("a.safetensors", 0.7)),
    ("dir:with:colons/a.safetensors", ("dir:with:colons/a.safetensors", 1.0)),
    ("C:/loras/a.safetensors:-1", ("C:/loras/a.safetensors", -1.0)),
])
def test_lora_spec(spec, parsed):
    assert lora_spec(spec) == parsed


def test_only_embeddings_the_prompt_uses_are_recorded(capsys, tiny_model_dir, tmp_path):
    from transformers import CLIPTextConfig

    from sdlab.text.embeddings import save_a1111

    dim = CLIPTextConfig.from_pretrained(tiny_model_dir / "text_encoder").hidden_size
    emb = save_a1111(tmp_path / "unused.safetensors", "zq", torch.randn(1, dim))   # "zqx" does not use it
    code = main(["generate", "a zqx circle", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "3",
                 "--embedding", str(emb), "--out", str(tmp_path / "o")])
    meta = read_png_metadata(capsys.readouterr().out.split()[0])
    assert code == 0 and "TI hashes" not in meta["params"] and "embeddings" not in meta["settings"]


def test_lora_after_fused_projections_is_refused(tiny_model_dir, lora_file):
    from sdlab.errors import ConfigError
    from sdlab.models.lora import apply_lora
    from sdlab.models.speed import SpeedOptions
    from sdlab.pipeline import Pipeline

    pipe = Pipeline.load(tiny_model_dir, speed=SpeedOptions(fuse_qkv=True))
    with pytest.raises(ConfigError, match="apply LoRA before fusing the QKV projections"):
        apply_lora(pipe, lora_file)


def test_cli_merges_the_lora_before_fusing(capsys, tiny_model_dir, tmp_path, lora_file):
    _, plain, _ = generate(capsys, tiny_model_dir, tmp_path / "plain", "--fast")
    _, slow, _ = generate(capsys, tiny_model_dir, tmp_path / "slow", "--lora", lora_file)
    code, fast, _ = generate(capsys, tiny_model_dir, tmp_path / "fast", "--lora", lora_file, "--fast")
    assert code == 0
    assert np.abs(pixels(fast[0]) - pixels(slow[0])).max() <= 2 < np.abs(pixels(fast[0]) - pixels(plain[0])).max()


def test_info_describes_embedding_files(capsys, tmp_path):
    from sdlab.text.embeddings import save_a1111, save_diffusers

    vectors = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    files = [save_a1111(tmp_path / "a.safetensors", "my-shape", vectors),
             save_diffusers(tmp_path / "learned_embeds.safetensors", {"my-shape": vectors})]
    torch.save({"string_to_param": {"*": vectors}, "name": "my-shape"}, tmp_path / "a.pt")
    for path in files + [tmp_path / "a.pt"]:
        assert main(["info", str(path)]) == 0
        text = capsys.readouterr().out
        assert "textual-inversion embedding" in text and "my-shape: 2 vector(s) of 3, norms 5.0, 1.0" in text, path


def test_a1111_lora_tag_in_the_prompt_is_the_same_as_the_flag(capsys, tiny_model_dir, tmp_path, lora_file):
    import shutil

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(lora_file, folder / "my-heart.safetensors")
    _, flag, _ = generate(capsys, tiny_model_dir, tmp_path / "flag", "--lora", f"{lora_file}:0.5")
    code = main(["generate", "a red circle <lora:my-heart:0.5>", "--model", str(tiny_model_dir), "--steps", "2",
                 "--seed", "3", "--lora-dir", str(folder), "--out", str(tmp_path / "tag")])
    tag = capsys.readouterr().out.split()
    assert code == 0 and np.abs(pixels(tag[0]) - pixels(flag[0])).max() == 0
    meta = read_png_metadata(tag[0])
    assert meta["prompt"] == "a red circle <lora:my-heart:0.5>"          # kept, as A1111 keeps it
    assert meta["params"]["Lora hashes"] == f"my-heart: {sha256_file(lora_file)[:12]}"


@pytest.mark.parametrize("prompt, dirs, message", [
    ("a <lora:my-heart:0.5>", False, "needs a folder of LoRA files to look in"),
    ("a <lora:other>", True, "<lora:other>: no other.safetensors in"),
    ("a <lora:my-heart:lots>", True, "the weight must be a number"),
    ("a <lora::1>", True, "a LoRA tag needs a name"),
    ("a <lora:../x>", True, "no ../x.safetensors"),
])
def test_bad_lora_tags_are_one_line_errors(capsys, tiny_model_dir, tmp_path, lora_file, prompt, dirs, message):
    import shutil

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(lora_file, folder / "my-heart.safetensors")
    shutil.copy(lora_file, tmp_path / "x.safetensors")              # outside the folder: not found
    extra = ["--lora-dir", str(folder)] if dirs else []
    code = main(["generate", prompt, "--model", str(tiny_model_dir), "--steps", "1", *extra,
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_lora_tags_are_parsed_and_stripped():
    from sdlab.text.extra_networks import lora_tags, strip_lora_tags

    prompt = "a red <lora:a:0.7> circle <lora:b>, (star:1.2)"
    assert lora_tags(prompt) == [("a", 0.7), ("b", 1.0)]
    assert strip_lora_tags(prompt) == "a red circle , (star:1.2)"


def test_info_on_an_unreadable_file_is_a_one_line_error(capsys, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cannot read file" in err and str(bad) in err and "Traceback" not in err
