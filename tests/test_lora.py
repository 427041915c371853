"""LoRA: trained adapters saved in diffusers and kohya layouts give the same model in sdlab
and in plain diffusers; `sdlab convert` round-trips and refuses unknown or half keys."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdlab.errors import ConfigError
from sdlab.models import lora as lora_files
from sdlab.training.config import TrainingConfig
from sdlab.training.loop import train
from sdlab.training.methods.lora import LoRA, LoraOptions
from lora_util import assert_files_load_alike


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from sdlab.world.data import export_folder

    root = tmp_path_factory.mktemp("lora")
    data = export_folder(root / "data", 4, seed=4)
    method = LoRA(LoraOptions(rank=2, alpha=4.0, text_encoder=True, targets="attention"))
    cfg = TrainingConfig(method="lora", data_dir=str(data), output_dir=str(root / "out"), model=str(tiny_model_dir),
                         max_steps=3, learning_rate=5e-2, checkpoint_every=100, device="cpu", options=method.options)
    train(cfg, method)
    return method, root / "out"


def test_trained_lora_loads_in_sdlab_and_diffusers_alike(trained, tiny_model_dir):
    method, out = trained
    layers = method.layers()
    assert len(layers) == 4 * 2 * 4 + 2 * 4   # UNet: 4 transformer blocks x attn1/2 x q,k,v,out; text: 2 layers x 4
    assert all(l.up.abs().max() > 0 for l in layers.values())          # B moved from its zero init
    assert_files_load_alike(out, tiny_model_dir)


def test_scale_is_linear(trained, tiny_model_dir):
    from sdlab.pipeline import Pipeline

    _, out = trained
    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    w = pipe.c.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight
    w0 = w.detach().clone()
    h = lora_files.apply_lora(pipe, out / "lora_kohya.safetensors", scale=1.0)
    d1 = w.detach() - w0
    h.remove()
    h = lora_files.apply_lora(pipe, out / "lora_kohya.safetensors", scale=0.5)
    assert torch.allclose(w.detach() - w0, 0.5 * d1, atol=1e-7) and d1.abs().max() > 0
    h.remove()


def test_convert_round_trip_and_refusals(trained, tiny_model_dir, tmp_path, capsys):
    from sdlab.cli.main import main

    _, out = trained
    kohya, back = tmp_path / "k.safetensors", tmp_path / "d.safetensors"
    model = ["--model", str(tiny_model_dir)]
    assert main(["convert", str(out / "lora/pytorch_lora_weights.safetensors"), str(kohya), "--to", "kohya", *model]) == 0
    assert main(["convert", str(kohya), str(back), "--to", "diffusers", *model]) == 0
    k, orig, d = load_file(str(kohya)), load_file(str(out / "lora_kohya.safetensors")), \
        load_file(str(back))
    assert k.keys() == orig.keys() and all(torch.equal(k[x], orig[x]) for x in k)
    src = load_file(str(out / "lora/pytorch_lora_weights.safetensors"))
    assert d.keys() == src.keys() and all(torch.equal(d[x], src[x]) for x in d)
    alpha_key = next(x for x in k if x.endswith(".alpha"))
    assert k[alpha_key].item() == 4.0

    bad = dict(orig)
    bad["lora_unet_mid_block_not_a_module.lora_down.weight"] = torch.zeros(2, 32)
    bad["lora_unet_mid_block_not_a_module.lora_up.weight"] = torch.zeros(32, 2)
    save_file(bad, str(tmp_path / "unknown.safetensors"))
    assert main(["convert", str(tmp_path / "unknown.safetensors"), str(tmp_path / "x.safetensors"), "--to",
                 "diffusers", *model]) == 2
    assert "names no module" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()
    for dst, message in [(tmp_path, "is a folder; give the output file"), (tmp_path / "x.pt", "must be a .safetensors")]:
        assert main(["convert", str(kohya), str(dst), "--to", "diffusers", *model]) == 2
        assert message in capsys.readouterr().err
    half = {x: v for x, v in orig.items() if not x.endswith("attn1_to_q.lora_up.weight")}
    save_file(half, str(tmp_path / "half.safetensors"))
    with pytest.raises(ConfigError, match="has no up weight"):
        lora_files.load_layers(tmp_path / "half.safetensors", *_modules(tiny_model_dir))
    save_file({"something.else": torch.zeros(1)}, str(tmp_path / "junk.safetensors"))
    with pytest.raises(ConfigError, match="unknown LoRA keys"):
        lora_files.load_layers(tmp_path / "junk.safetensors", *_modules(tiny_model_dir))
    wrong = dict(orig)
    key = next(x for x in wrong if x.endswith("lora_down.weight"))
    wrong[key] = torch.zeros(2, 5)
    save_file(wrong, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ConfigError, match="do not fit"):
        lora_files.load_layers(tmp_path / "shape.safetensors", *_modules(tiny_model_dir))


def _modules(model_dir):
    from sdlab.pipeline import Pipeline

    p = Pipeline.load(model_dir, device="cpu")
    return p.c.unet, p.c.text_encoder


def test_lora_plus_gives_the_b_matrices_a_larger_rate(tiny_model_dir, tmp_path, capsys):
    from sdlab.cli.main import main
    from sdlab.training.loop import Trainer
    from sdlab.world.data import export_folder

    data = export_folder(tmp_path / "data", 2, seed=2)

    def b_change(ratio):
        method = LoRA(LoraOptions(rank=2, lr_ratio_b=ratio))
        cfg = TrainingConfig(method="lora", data_dir=str(data), output_dir=str(tmp_path / f"r{ratio}"),
                             model=str(tiny_model_dir), max_steps=1, learning_rate=1e-3, batch_size=2,
                             device="cpu", options=method.options)
        trainer = Trainer(cfg, method)
        groups = [(len(g["params"]), g["lr"]) for g in trainer.optimizer.param_groups]
        trainer.run()
        ups = [p for n, p in method.named_trainable().items() if ".lora_B." in n]
        return groups, max(p.abs().max().item() for p in ups)       # B starts at zero: its change

    (one, plain), (two, plus) = b_change(1.0), b_change(16.0)
    assert len(one) == 1 and len(two) == 2
    assert two[1][1] == pytest.approx(16e-3) and two[0][1] == pytest.approx(1e-3)
    assert two[0][0] == two[1][0] and one[0][0] == 2 * two[0][0]          # A and B split evenly
    assert plus / plain == pytest.approx(16, rel=0.05)                    # Adam's first step: lr x sign(gradient)
    args = ["train", "lora", "--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "1",
            "--output-dir", str(tmp_path / "r16.0"), "--device", "cpu", "--resume", "latest", "--max-steps", "2"]
    assert main(args) == 2 and "lr_ratio_b 16.0 -> 1.0" in capsys.readouterr().err


def test_a_new_token_trains_with_the_adapters(tiny_model_dir, tmp_path):
    """Pivotal tuning: LoRA plus a new token's embedding; only the new rows of the table move,
    and a checkpoint applies as the saved LoRA + embedding files do."""
    from transformers import CLIPTextModel

    from sdlab.evaluate import apply
    from sdlab.pipeline import Pipeline
    from sdlab.text.embeddings import load_embedding
    from sdlab.world.data import export_folder

    data = export_folder(tmp_path / "data", 3, seed=5)
    method = LoRA(LoraOptions(rank=2, new_token="<sks>", new_token_init="circle", new_token_vectors=2))
    cfg = TrainingConfig(method="lora", data_dir=str(data), output_dir=str(tmp_path / "out"), model=str(tiny_model_dir),
                         instance_prompt="a <sks>", max_steps=3, learning_rate=5e-2, checkpoint_every=3,
                         device="cpu", options=method.options)
    result = train(cfg, method)
    assert sorted(p.name for p in result.saved) == ["learned_embeds.safetensors", "lora_kohya.safetensors",
                                                   "pytorch_lora_weights.safetensors", "sks.safetensors"]
    before = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder").get_input_embeddings().weight
    after = method.c.text_encoder.get_input_embeddings().weight.detach()
    vocab = before.shape[0]
    assert after.shape[0] == vocab + 2 and torch.equal(after[:vocab], before.detach())     # old rows untouched
    circle = before[method.c.tokenizer("circle", add_special_tokens=False).input_ids[0]]
    assert not torch.allclose(after[vocab:], circle.expand(2, -1))                         # the new ones learned
    assert method.transform_text("a red <sks>", 0) == "a red <sks> <sks>_1"

    from_ckpt = apply.load_checkpoint(tiny_model_dir, tmp_path / "out" / "checkpoints" / "step-00000003")
    files = Pipeline.load(tiny_model_dir, device="cpu")
    load_embedding(files, tmp_path / "out" / "learned_embeds.safetensors")
    lora_files.apply_lora(files, tmp_path / "out" / "lora_kohya.safetensors")
    assert torch.allclose(from_ckpt.encode_prompt(["a <sks>"]), files.encode_prompt(["a <sks>"]), atol=1e-6)
    pairs = zip(from_ckpt.c.unet.parameters(), files.c.unet.parameters())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in pairs)
    with pytest.raises(ConfigError, match="placeholder must be one word"):
        LoraOptions(new_token="two words")
    from sdlab.cli.main import main                     # sdlab eval reads the pair of files together
    assert main(["eval", "--model", str(tiny_model_dir), "--artifact", str(tmp_path / "out" / "lora_kohya.safetensors"),
                 "--embedding", str(tmp_path / "out" / "learned_embeds.safetensors"), "--token", "<sks>", "--n", "1",
                 "--steps", "1", "--no-clip", "--out", str(tmp_path / "eval")]) == 0
    assert "| lora_kohya | 0 |" in (tmp_path / "eval" / "report.md").read_text()


def test_the_new_token_can_have_its_own_rate(tiny_model_dir, tmp_path):
    from sdlab.training.loop import Trainer
    from sdlab.world.data import export_folder

    data = export_folder(tmp_path / "data", 2, seed=2)
    method = LoRA(LoraOptions(rank=2, new_token="<sks>", new_token_lr=5e-3, lr_ratio_b=4.0))
    cfg = TrainingConfig(method="lora", data_dir=str(data), output_dir=str(tmp_path / "out"), model=str(tiny_model_dir),
                         instance_prompt="a <sks>", max_steps=1, learning_rate=1e-4, device="cpu",
                         options=method.options)
    groups = Trainer(cfg, method).optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 4e-4, 5e-3])
    assert groups[2]["params"] == [method.new.rows]                       # the embedding alone at its rate
    with pytest.raises(ConfigError, match="give new_token"):
        LoraOptions(new_token_lr=1e-3)
