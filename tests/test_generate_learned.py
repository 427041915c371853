"""`sdlab generate --lora FILE[:SCALE] --embedding FILE`: what `sdlab train` learned, applied
from the CLI and recorded in the image metadata (A1111's "Lora hashes" / "TI hashes")."""

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.cli.generate import lora_spec
from sdlab.cli.main import main
from sdlab.io.metadata import read_png_metadata
from sdlab.models.hashing import lora_short_hash, sha256_file


@pytest.fixture
def lora_folder(tmp_path, lora_file):
    """A --lora-dir with the LoRA as my-heart.safetensors."""
    import shutil

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(lora_file, folder / "my-heart.safetensors")
    return folder


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
    digest = lora_short_hash(lora_file)         # A1111's: the sha256 of the tensor data after the header
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


def test_lora_on_fused_projections_matches_the_unfused_model(tiny_model_dir, lora_file):
    """--fast fuses QKV (diffusers' to_qkv / to_kv): a LoRA merged afterwards is copied into the
    fused weights, and taken out of them again."""
    from lora_util import unet_out
    from sdlab.models.lora import apply_lora
    from sdlab.models.speed import SpeedOptions
    from sdlab.pipeline import Pipeline

    def out(pipe):
        return unet_out(pipe.c.unet, pipe.c.text_encoder, pipe.c.tokenizer)

    plain, fused = Pipeline.load(tiny_model_dir), Pipeline.load(tiny_model_dir, speed=SpeedOptions(fuse_qkv=True))
    base = out(fused)
    handles = [apply_lora(p, lora_file) for p in (plain, fused)]
    assert torch.allclose(out(fused), out(plain), atol=1e-5) and (out(fused) - base).abs().max() > 1e-4
    handles[1].remove()
    assert torch.allclose(out(fused), base, atol=1e-6)


def test_cli_merges_the_lora_before_fusing(capsys, tiny_model_dir, tmp_path, lora_file):
    _, plain, _ = generate(capsys, tiny_model_dir, tmp_path / "plain", "--fast")
    _, slow, _ = generate(capsys, tiny_model_dir, tmp_path / "slow", "--lora", lora_file)
    code, fast, _ = generate(capsys, tiny_model_dir, tmp_path / "fast", "--lora", lora_file, "--fast")
    assert code == 0
    assert np.abs(pixels(fast[0]) - pixels(slow[0])).max() <= 2 < np.abs(pixels(fast[0]) - pixels(plain[0])).max()


def test_lora_tag_with_fast_is_the_tag_without(capsys, tiny_model_dir, tmp_path, lora_folder):
    prompt = "a red circle <lora:my-heart:0.5>"
    outs = []
    for extra in ([], ["--fast"]):
        code = main(["generate", prompt, "--model", str(tiny_model_dir), "--steps", "2", "--seed", "3",
                     "--lora-dir", str(lora_folder), "--out", str(tmp_path / str(len(extra))), *extra])
        outs.append(capsys.readouterr().out.split()[0])
        assert code == 0
    assert np.abs(pixels(outs[0]) - pixels(outs[1])).max() <= 2


def test_lora_tags_in_interpolate_and_edit_prompts_are_applied(capsys, tiny_model_dir, tmp_path, lora_file,
                                                               lora_folder):
    """Commands that sample several prompts together apply the tags of all of them, like --lora."""
    common = ["--model", str(tiny_model_dir), "--steps", "2", "--seed", "3"]
    runs = {
        "interpolate": (["interpolate", "a red circle <lora:my-heart:0.5>", "a blue square", "--frames", "2"],
                        ["interpolate", "a red circle", "a blue square", "--frames", "2"], "--out", "i.png"),
        "edit": (["edit", "a red circle <lora:my-heart:0.5>", "a red square <lora:my-heart:0.5>"],
                 ["edit", "a red circle", "a red square"], "--out", "."),
    }
    for name, (tagged, plain, out_flag, out_name) in runs.items():
        paths = []
        for i, args in enumerate((tagged + ["--lora-dir", str(lora_folder)], plain + ["--lora", f"{lora_file}:0.5"],
                                  plain)):
            folder = tmp_path / f"{name}{i}"
            folder.mkdir()
            out = folder / out_name if out_name != "." else folder
            assert main([*args, *common, out_flag, str(out)]) == 0, name
            paths.append(capsys.readouterr().out.split()[0])
        tag, flag, none = (pixels(p) for p in paths)
        assert np.abs(tag - flag).max() == 0 < np.abs(tag - none).max(), name


def test_one_lora_with_two_weights_in_prompts_sampled_together_is_refused(capsys, tiny_model_dir, tmp_path,
                                                                          lora_folder):
    code = main(["edit", "a red circle <lora:my-heart:0.5>", "a red square <lora:my-heart:1>", "--steps", "1",
                 "--model", str(tiny_model_dir), "--lora-dir", str(lora_folder), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "<lora:my-heart> has weight 0.5 in one prompt and 1 in another" in err


def test_lora_tags_are_not_tokens_of_the_prompt(tiny_model_dir):
    from transformers import CLIPTokenizer

    from sdlab.attention.maps import token_labels

    tok = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    labels = token_labels(tok, "a red <lora:my-heart:0.5> circle")
    assert labels == token_labels(tok, "a red circle") and [t.text for t in labels] == ["a", "red", "circle"]


def test_info_describes_embedding_files(capsys, tmp_path):
    from sdlab.text.embeddings import save_a1111, save_diffusers

    vectors = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    files = [save_a1111(tmp_path / "my-shape.safetensors", "my-shape", vectors),      # A1111: named after the file
             save_diffusers(tmp_path / "learned_embeds.safetensors", {"my-shape": vectors})]
    torch.save({"string_to_param": {"*": vectors}, "name": "my-shape"}, tmp_path / "my-shape.pt")
    for path in files + [tmp_path / "my-shape.pt"]:
        assert main(["info", str(path)]) == 0
        text = capsys.readouterr().out
        assert "textual-inversion embedding" in text and "my-shape: 2 vector(s) of 3, norms 5.0, 1.0" in text, path


def test_a1111_lora_tag_in_the_prompt_is_the_same_as_the_flag(capsys, tiny_model_dir, tmp_path, lora_file,
                                                              lora_folder):
    folder = lora_folder
    _, flag, _ = generate(capsys, tiny_model_dir, tmp_path / "flag", "--lora", f"{lora_file}:0.5")
    code = main(["generate", "a red circle <lora:my-heart:0.5>", "--model", str(tiny_model_dir), "--steps", "2",
                 "--seed", "3", "--lora-dir", str(folder), "--out", str(tmp_path / "tag")])
    tag = capsys.readouterr().out.split()
    assert code == 0 and np.abs(pixels(tag[0]) - pixels(flag[0])).max() == 0
    meta = read_png_metadata(tag[0])
    assert meta["prompt"] == "a red circle <lora:my-heart:0.5>"          # kept, as A1111 keeps it
    assert meta["params"]["Lora hashes"] == f"my-heart: {lora_short_hash(lora_file)}"


@pytest.mark.parametrize("prompt, dirs, message", [
    ("a <lora:my-heart:0.5>", False, "needs a folder of LoRA files to look in"),
    ("a <lora:other>", True, "<lora:other>: no other.safetensors in"),
    ("a <lora:my-heart:lots>", True, "the weight must be a number"),
    ("a <lora::1>", True, "a LoRA tag needs a name"),
    ("a <lora:../x>", True, "no ../x.safetensors"),
])
def test_bad_lora_tags_are_one_line_errors(capsys, tiny_model_dir, tmp_path, lora_file, lora_folder, prompt, dirs,
                                           message):
    import shutil

    folder = lora_folder
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


def test_model_weight_files_are_named_as_such(capsys, tmp_path, tiny_model_dir):
    """A diffusers component file or a weights .bin is not taken for an embedding."""
    torch.save({f"down_blocks.{i}.weight": torch.zeros(2, 2) for i in range(30)}, tmp_path / "weights.bin")
    component = tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    for args, message in [(["info", str(tmp_path / "weights.bin")], "holds model weights (30 tensors)"),
                          (["info", str(component)], "holds only the unet of the diffusers folder"),
                          (["generate", "x", "--model", str(component)], "give the folder")]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, args
