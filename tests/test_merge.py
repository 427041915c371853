"""sdlab merge (sdlab.models.merge): A1111's checkpoint merger on tiny random models and LoRA files.

The merged folder is read back by diffusers itself (StableDiffusionPipeline / UNet2DConditionModel
.from_pretrained) and a merged LoRA by diffusers' load_lora_weights, compared with sdlab applying it.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sdlab.cli.main import main
from sdlab.errors import ConfigError
from sdlab.io.atomic import OutputExists
from sdlab.models.merge import RECIPE_FILE, RECIPE_KEY, merge, merge_loras, merge_models
from lora_util import unet_out


def perturbed(src, dst, seed, scale=0.1):
    """A copy of a model folder or .safetensors file with noise added to every float tensor (a LoRA's
    alphas kept: LoRAs merged have one rank and alpha)."""
    g = torch.Generator().manual_seed(seed)
    if src.is_dir():
        shutil.copytree(src, dst)
        files = list(dst.rglob("*.safetensors"))
    else:
        shutil.copyfile(src, dst)
        files = [dst]
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(path)
        save_file({k: v + scale * torch.randn(v.shape, generator=g).to(v.dtype)
                   if v.is_floating_point() and not k.endswith(".alpha") else v
                   for k, v in tensors.items()}, str(path), metadata=metadata)
    return dst


def weights(path):
    """{relative file: {key: tensor}} of a folder's .safetensors files ({"f": ...} for one file)."""
    if path.is_file():
        return {"f": load_file(path)}
    return {str(p.relative_to(path)): load_file(p) for p in sorted(path.rglob("*.safetensors"))}


def assert_weights(merged, expected):
    assert merged.keys() == expected.keys()
    for name in merged:
        for key, value in merged[name].items():
            assert value.dtype == expected[name][key].dtype and torch.equal(value, expected[name][key]), (name, key)


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return tiny_model_dir, perturbed(tiny_model_dir, root / "b", 1), perturbed(tiny_model_dir, root / "c", 2)


@pytest.fixture(scope="module")
def loras(lora_file, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-lora")
    return lora_file, perturbed(lora_file, root / "b.safetensors", 3), perturbed(lora_file, root / "c.safetensors", 4)


def expected_weights(paths, fn):
    """fn(a, b, c) in float32 per float tensor, stored in A's dtype (the index buffers are A's)."""
    a, b, c = (weights(p) for p in paths)
    return {name: {k: fn(v.float(), b[name][k].float(), c[name][k].float()).to(v.dtype) if v.is_floating_point()
                   else v for k, v in a[name].items()} for name in a}


def test_alpha_0_is_a_and_alpha_1_is_b_bit_for_bit(models, tmp_path):
    a, b, _ = models
    assert_weights(weights(merge(a, b, tmp_path / "zero", alpha=0).path), weights(a))
    assert_weights(weights(merge_models(a, b, tmp_path / "one", alpha=1.0).path), weights(b))
    assert (weights(a)["unet/diffusion_pytorch_model.safetensors"]["conv_in.weight"]
            != weights(b)["unet/diffusion_pytorch_model.safetensors"]["conv_in.weight"]).all()


def test_tensors_a_and_b_share_are_kept_bit_for_bit(models, tmp_path):
    """(1 - 0.3) x + 0.3 x rounds away from x in float32 for some x: a shared tensor is copied instead."""
    a = models[0]
    x = weights(a)["unet/diffusion_pytorch_model.safetensors"]["conv_in.weight"]
    assert not torch.equal((1 - 0.3) * x + 0.3 * x, x)
    assert_weights(weights(merge(a, a, tmp_path / "same", alpha=0.3).path), weights(a))


def test_weighted_sum_and_add_difference_are_a1111s_formulas(models, tmp_path):
    a, b, c = models
    out = merge(a, b, tmp_path / "w", alpha=0.3)
    assert_weights(weights(out.path), expected_weights(models, lambda x, y, z: (1 - 0.3) * x + 0.3 * y))
    out = merge(a, b, tmp_path / "d", alpha=0.7, mode="add-difference", c=c)
    assert out.kind == "model folder" and out.tensors == sum(len(v) for v in weights(a).values())
    assert_weights(weights(out.path), expected_weights(models, lambda x, y, z: x + 0.7 * (y - z)))


def test_merged_folder_loads_in_diffusers_and_records_its_recipe(models, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    a, b, c = models
    out = merge(a, b, tmp_path / "merged", alpha=0.5, mode="add-difference", c=c).path
    expected = weights(out)["unet/diffusion_pytorch_model.safetensors"]
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    for model in (pipe.unet, unet):
        assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    copied = [p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix != ".safetensors"]
    assert "tokenizer/tokenizer.json" in map(str, copied)
    assert all((out / rel).read_bytes() == (a / rel).read_bytes() for rel in copied)
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert recipe["interp_method"] == "Add difference" and recipe["multiplier"] == 0.5
    assert [recipe[f"{r}_model"] for r in ("primary", "secondary", "tertiary")] == [a.name, b.name, c.name]
    assert len(recipe["primary_model_hash"]) == 10
    with safe_open(str(out / "vae" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()[RECIPE_KEY]) == recipe and f.metadata()["format"] == "pt"


def test_single_file_models_merge_key_by_key(models, tmp_path):
    a, b, _ = models
    fa, fb = a / "unet" / "diffusion_pytorch_model.safetensors", b / "unet" / "diffusion_pytorch_model.safetensors"
    out = merge(fa, fb, tmp_path / "unet.safetensors", alpha=0.25)
    assert out.kind == "model file"
    expected = {k: ((1 - 0.25) * v.float() + 0.25 * weights(fb)["f"][k].float()).to(v.dtype)
                for k, v in weights(fa)["f"].items()}
    assert_weights(weights(out.path), {"f": expected})


def test_merged_lora_loads_in_diffusers_as_in_sdlab(loras, tiny_model_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    from sdlab.models import lora as lora_files
    from sdlab.pipeline import Pipeline

    a, b, c = loras
    out = merge_loras(a, b, tmp_path / "ab.safetensors", alpha=0.4).path
    assert_weights(weights(out), expected_weights((a, b, c), lambda x, y, z: (1 - 0.4) * x + 0.4 * y))
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()[RECIPE_KEY])["kind"] == "LoRA file"
    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    base = unet_out(pipe.c.unet, pipe.c.text_encoder, pipe.c.tokenizer)
    lora_files.apply_lora(pipe, out, scale=1.0)
    ours = unet_out(pipe.c.unet, pipe.c.text_encoder, pipe.c.tokenizer)
    dp = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    dp.load_lora_weights(str(out))
    assert (ours - base).abs().max() > 1e-4
    assert torch.allclose(unet_out(dp.unet, dp.text_encoder, dp.tokenizer), ours, atol=1e-5)


def test_an_existing_output_is_refused_and_kept(models, loras, tmp_path):
    a, b, _ = models
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    with pytest.raises(OutputExists, match="exists"):
        merge(a, b, taken, alpha=0.5)
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]
    file = tmp_path / "taken.safetensors"
    file.write_bytes(b"keep")
    with pytest.raises(OutputExists, match="exists"):
        merge(loras[0], loras[1], file, alpha=0.5)
    assert file.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "taken.safetensors"]   # no temp left


def test_mismatches_are_one_line_errors_naming_the_first_key(models, loras, tmp_path):
    a, b, _ = models
    la, lb, _ = loras
    with pytest.raises(ConfigError, match="A is a model folder and B a LoRA file"):
        merge(a, la, tmp_path / "x", alpha=0.5)
    with pytest.raises(ConfigError, match="not a LoRA file"):
        merge_loras(a, b, tmp_path / "x", alpha=0.5)
    tensors = load_file(lb)
    first, second = sorted(tensors)[:2]
    save_file({k: v for k, v in tensors.items() if k != second}, str(tmp_path / "fewer.safetensors"))
    with pytest.raises(ConfigError, match=f"key '{second}' is in A but not in B"):
        merge(la, tmp_path / "fewer.safetensors", tmp_path / "x.safetensors", alpha=0.5)
    save_file({**tensors, first: torch.zeros(3, *tensors[first].shape)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ConfigError, match=f"key '{first}' has shape") as err:
        merge(la, tmp_path / "wide.safetensors", tmp_path / "x.safetensors", alpha=0.5)
    assert "\n" not in str(err.value)
    odd = perturbed(b, tmp_path / "odd", 5)
    (odd / "vae" / "diffusion_pytorch_model.safetensors").rename(odd / "vae" / "other.safetensors")
    with pytest.raises(ConfigError, match="weight file 'vae/"):
        merge(a, odd, tmp_path / "y", alpha=0.5)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("kwargs,message", [
    (dict(alpha=1.5), "alpha must be a number from 0 to 1"),
    (dict(alpha=float("nan")), "alpha must be"),
    (dict(alpha=0.5, mode="sum"), "merge mode must be one of weighted, add-difference"),
    (dict(alpha=0.5, mode="add-difference"), "needs a third model C"),
])
def test_option_errors(models, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        merge(models[0], models[1], tmp_path / "x", **kwargs)


def test_cli_merges_and_refuses_in_one_line(models, loras, tmp_path, capsys):
    a, b, c = models
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "--mode", "add-difference", "--c", str(c),
                 "--out", str(tmp_path / "m")]) == 0
    assert "model folder" in capsys.readouterr().out and (tmp_path / "m" / RECIPE_FILE).is_file()
    assert main(["merge", str(a), str(b), "--alpha", "0.5", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdlab: error: ") and "exists" in err and err.count("\n") == 1
    lora_out = tmp_path / "l.safetensors"
    assert main(["merge", str(loras[0]), str(loras[1]), "--alpha", "0", "--out", str(lora_out)]) == 0
    assert_weights(weights(lora_out), weights(loras[0]))
    assert main(["merge", str(tmp_path / "nope"), str(b), "--alpha", "0.5", "--out", str(tmp_path / "n")]) == 2
    assert "A '" in capsys.readouterr().err


def test_the_clis_torch_free_mode_list_is_the_librarys():
    from sdlab.cli.merge import MODE_CHOICES
    from sdlab.models.merge import MODES

    assert MODE_CHOICES == tuple(MODES)
