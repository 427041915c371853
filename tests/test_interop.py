"""Files and conventions shared with peer tools, checked with the peer's rules on the reading
side: kohya-ss' LoRA names (A1111, ComfyUI, diffusers), transformers 4.x's text-encoder keys,
A1111's infotext, hashes and embedding files, diffusers' single-file loader, and the usual
command-line conventions (--version, python -m, defaults in --help)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdlab.cli.main import build_parser, main
from sdlab.errors import SdlabError

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "sdlab" / "assets" / "shapes-sd"


# --- peers' rules, written from their code ----------------------------------------------------

def kohya_lora(text_encoder, unet, rank=2, alpha=1.0, seed=0) -> dict[str, torch.Tensor]:
    """A LoRA state dict as kohya-ss sd-scripts (networks/lora.py) saves one: for every Linear
    or Conv2d inside a CLIPAttention/CLIPMLP (text encoder) or Transformer2DModel (UNet),
    "lora_te"/"lora_unet" + "." + module name + "." + child name with dots as underscores, then
    .lora_down.weight, .lora_up.weight and a scalar .alpha, stored in fp16. kohya runs on
    transformers 4.x, whose CLIPTextModel holds its modules under `text_model.`."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, root, classes in (("lora_te", text_encoder, ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")),
                                  ("lora_unet", unet, ("Transformer2DModel",))):
        for name, module in root.named_modules():
            if type(module).__name__ not in classes:
                continue
            if prefix == "lora_te" and not name.startswith("text_model."):
                name = "text_model." + name
            for child_name, child in module.named_modules():
                if not child_name or not isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)):
                    continue
                stem = f"{prefix}.{name}.{child_name}".replace(".", "_")
                w = child.weight
                extra = (1, 1) if w.dim() == 4 else ()
                out[f"{stem}.lora_down.weight"] = (torch.randn(rank, w.shape[1], *extra, generator=g) * 0.1).half()
                out[f"{stem}.lora_up.weight"] = (torch.randn(w.shape[0], rank, *extra, generator=g) * 0.1).half()
                out[f"{stem}.alpha"] = torch.tensor(alpha).half()
    return out


A1111_TE = re.compile(r"lora_te_text_model_encoder_layers_(\d+)_(.+)")    # A1111 Lora/lora_convert.py (SD 1.x)


def a1111_text_layer(stem: str) -> str | None:
    """A1111's convert_diffusers_name_to_compvis for a text-encoder stem: the name of the layer
    in its network_layer_mapping (cond_stage_model.wrapped modules, dots as underscores)."""
    m = A1111_TE.fullmatch(stem)
    return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}" if m else None


def a1111_addnet_hash(path) -> str:
    """A1111 modules/hashes.py addnet_hash_safetensors: sha256 of the bytes after the header."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n:]).hexdigest()


_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')   # A1111 infotext_utils.py


def a1111_parse(text: str) -> dict:
    """A1111's parse_generation_parameters: the last line holds `key: value, ...` (3 pairs at
    least), the lines before it the prompt, then "Negative prompt:"."""
    res, prompt, negative, done = {}, "", "", False
    *lines, last = text.strip().split("\n")
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done, line = True, line[16:].strip()
        if done:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for k, v in _RE_PARAM.findall(last):
        res[k] = json.loads(v) if v[:1] == '"' and v[-1:] == '"' else v
    res["Prompt"], res["Negative prompt"] = prompt, negative
    return res


def a1111_lora_tags(prompt: str) -> dict[str, float]:
    """A1111 extra_networks.parse_prompt: <lora:NAME:WEIGHT> tags."""
    out = {}
    for kind, args in re.findall(r"<(\w+):([^>]+)>", prompt):
        if kind == "lora":
            items = args.split(":")
            out[items[0]] = float(items[1]) if len(items) > 1 else 1.0
    return out


# A1111 >= 1.9 sd_samplers / sd_schedulers: samplers with their own default schedule, and
# get_sampler_and_scheduler (a schedule label may end the sampler name, "DPM++ 2M Karras").
A1111_SAMPLER_DEFAULTS = {"Euler a": None, "Euler": None, "LMS": None, "Heun": None, "DPM++ 2M": "karras",
                          "DDIM": None}
A1111_SCHEDULES = {"Automatic": "automatic", "Uniform": "uniform", "Karras": "karras", "Exponential": "exponential",
                   "Polyexponential": "polyexponential", "SGM Uniform": "sgm_uniform", "KL Optimal": "kl_optimal",
                   "Align Your Steps": "align_your_steps", "Simple": "simple", "Normal": "normal", "DDIM": "ddim",
                   "Beta": "beta"}


def a1111_sampler(d: dict) -> tuple[str, str]:
    """(sampler, effective schedule name) A1111 samples with for an infotext's fields."""
    name, schedule = d.get("Sampler") or "DPM++ 2M", A1111_SCHEDULES.get(d.get("Schedule type"), "automatic")
    for label, key in A1111_SCHEDULES.items():
        if name.endswith(" " + label):
            name, schedule = name[: -len(label) - 1], key
            break
    assert name in A1111_SAMPLER_DEFAULTS, f"A1111 has no sampler {name!r}"
    if schedule == "automatic":
        schedule = A1111_SAMPLER_DEFAULTS[name] or "uniform"
    return name, schedule


# --- 1. LoRA: kohya's text-encoder names ------------------------------------------------------

def _te_out(text_encoder, tokenizer, prompt="a red circle"):
    ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def test_reads_a_lora_built_the_way_kohya_writes_it(tiny_model_dir, tmp_path):
    from sdlab.models.lora import apply_lora
    from sdlab.pipeline import Pipeline

    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    te, unet = pipe.c.text_encoder, pipe.c.unet
    state = kohya_lora(te, unet, rank=2, alpha=1.0)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in state)
    path = tmp_path / "kohya.safetensors"
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "2",
                                          "ss_network_alpha": "1.0"})
    q = te.get_submodule("text_model.encoder.layers.0.self_attn.q_proj" if hasattr(te, "text_model")
                         else "encoder.layers.0.self_attn.q_proj")
    w0, base = q.weight.detach().clone(), _te_out(te, pipe.c.tokenizer)
    apply_lora(pipe, path, scale=0.5)
    stem = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    up, down = state[f"{stem}.lora_up.weight"].float(), state[f"{stem}.lora_down.weight"].float()
    assert torch.allclose(q.weight.detach(), w0 + 0.5 * (1.0 / 2) * up @ down, atol=1e-6)
    assert (_te_out(te, pipe.c.tokenizer) - base).abs().max() > 1e-3


def test_old_sdlab_text_encoder_names_are_still_read(tiny_model_dir, tmp_path):
    from sdlab.models.lora import load_layers
    from sdlab.pipeline import Pipeline

    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    state = {k.replace("lora_te_text_model_", "lora_te_"): v
             for k, v in kohya_lora(pipe.c.text_encoder, pipe.c.unet).items()}
    save_file(state, str(tmp_path / "old.safetensors"))
    layers = load_layers(tmp_path / "old.safetensors", pipe.c.unet, pipe.c.text_encoder)
    assert sum(m.startswith("text_encoder.") for m in layers) == 2 * 6      # 2 layers x q, k, v, out, fc1, fc2


def _random_layers(pipe, seed=1):
    from sdlab.models.lora import LoraLayer, model_modules

    g = torch.Generator().manual_seed(seed)
    layers = {}
    for path, module in model_modules(pipe.c.unet, pipe.c.text_encoder).items():
        # q, k, v and out together: diffusers tells kohya's text-encoder layers by their out_proj
        if path.endswith(("q_proj", "k_proj", "v_proj", "out_proj", "attn2.to_k")) and module.weight.dim() == 2:
            out_dim, in_dim = module.weight.shape
            layers[path] = LoraLayer(torch.randn(2, in_dim, generator=g) * 0.3, torch.randn(out_dim, 2, generator=g) * 0.3,
                                     2.0)
    return layers


def test_kohya_output_names_the_text_encoder_as_a1111_comfyui_and_diffusers_map_it(tiny_model_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    from sdlab.models import lora
    from sdlab.pipeline import Pipeline

    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    layers = _random_layers(pipe)
    path = lora.write(tmp_path / "mine.safetensors", layers, "kohya")
    stems = {k.split(".")[0] for k in load_file(str(path)) if k.startswith("lora_te_")}
    te_names = {n if n.startswith("text_model.") else "text_model." + n
                for n, m in pipe.c.text_encoder.named_modules() if isinstance(m, torch.nn.Linear)}
    a1111_layers = {("transformer." + n).replace(".", "_") for n in te_names}     # cond_stage_model.wrapped
    assert len(stems) == 8 and all(a1111_text_layer(s) in a1111_layers for s in stems)   # 8 of 8 map
    handle = lora.apply_lora(pipe, path)
    ours = _te_out(pipe.c.text_encoder, pipe.c.tokenizer)
    handle.remove()
    dp = StableDiffusionPipeline.from_pretrained(tiny_model_dir, safety_checker=None)
    before = _te_out(dp.text_encoder, dp.tokenizer)
    dp.load_lora_weights(str(path))
    after = _te_out(dp.text_encoder, dp.tokenizer)
    assert (after - before).abs().max() > 1e-3 and torch.allclose(after, ours, atol=1e-5)


# --- 2. text-encoder weights that transformers 4.x loads too ----------------------------------

def _v4_keys(model) -> set[str]:
    """The state-dict keys of this CLIPTextModel as transformers 4.x names them."""
    return {"text_model." + k.removeprefix("text_model.") for k in model.state_dict()}


def test_the_shipped_text_encoder_has_the_keys_every_transformers_loads():
    from transformers import CLIPTextModel

    from sdlab.pipeline import Pipeline

    raw = load_file(str(SHIPPED / "text_encoder" / "model.safetensors"))
    model, info = CLIPTextModel.from_pretrained(SHIPPED / "text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert set(raw) == _v4_keys(model)                        # transformers 4.x finds every weight
    loaded = Pipeline.load(None, device="cpu").c.text_encoder.state_dict()
    for key in ("text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.0.self_attn.q_proj.weight",
                "text_model.final_layer_norm.bias"):
        mine = loaded.get(key, loaded.get(key.removeprefix("text_model.")))
        assert torch.equal(mine, raw[key]), key                 # not re-initialised


def test_a_saved_model_folder_writes_portable_text_encoder_keys(tiny_model_dir, tmp_path):
    from sdlab.pipeline import Pipeline
    from sdlab.training.methods.base import save_model_folder

    pipe = Pipeline.load(tiny_model_dir, device="cpu")
    save_model_folder(pipe.c, tmp_path / "model")
    raw = load_file(str(tmp_path / "model" / "text_encoder" / "model.safetensors"))
    assert set(raw) == _v4_keys(pipe.c.text_encoder)
    again = Pipeline.load(tmp_path / "model", device="cpu").c.text_encoder.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in pipe.c.text_encoder.state_dict().items())


def test_a_text_encoder_file_without_its_weights_is_refused(tiny_model_dir, tmp_path):
    import shutil

    from sdlab.pipeline import Pipeline

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "text_encoder" / "model.safetensors"
    save_file({"other." + k: v for k, v in load_file(str(weights)).items()}, str(weights))
    with pytest.raises(SdlabError, match="missing"):
        Pipeline.load(folder, device="cpu")


# --- 3. A1111 infotext: LoRA hashes, tags, samplers -------------------------------------------

def test_generate_with_a_lora_writes_what_a1111_reads(capsys, tiny_model_dir, tmp_path):
    from sdlab.io.metadata import read_png_metadata
    from sdlab.models import lora
    from sdlab.pipeline import Pipeline

    path = lora.write(tmp_path / "my-heart.safetensors", _random_layers(Pipeline.load(tiny_model_dir)), "kohya")
    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "3",
                 "--sampler", "DPM++ 2M", "--lora", f"{path}:0.8", "--out", str(tmp_path / "out")])
    assert code == 0
    png = capsys.readouterr().out.split()[0]
    info = a1111_parse(read_png_metadata(png)["parameters"])
    assert a1111_lora_tags(info["Prompt"]) == {"my-heart": 0.8}       # PNG Info applies it again
    hashes = dict(x.strip().split(": ") for x in info["Lora hashes"].split(","))
    assert hashes == {"my-heart": a1111_addnet_hash(path)[:12]}         # A1111 finds the file by this hash
    assert hashes["my-heart"] != hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    spacing = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())["timestep_spacing"]
    expected = {"linspace": "uniform", "trailing": "sgm_uniform", "leading": "ddim"}[spacing]
    assert a1111_sampler(info) == ("DPM++ 2M", expected)               # not A1111's default Karras


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "Heun", "LMS", "DPM++ 2M", "DDIM", "Euler Karras",
                                     "Euler a Karras", "Heun Karras", "LMS Karras", "DPM++ 2M Karras"])
def test_each_sampler_is_named_so_a1111_samples_alike(sampler):
    from sdlab.io.metadata import format_infotext, sampler_fields
    from sdlab.sampling import get_sampler

    spec = get_sampler(sampler)
    info = a1111_parse(format_infotext("p", "", {"Steps": 20, **sampler_fields(spec.name, spec.sigma_kind, "linspace"),
                                                 "CFG scale": 7}))
    name, schedule = a1111_sampler(info)
    assert name == sampler.removesuffix(" Karras")
    assert schedule == ("karras" if spec.sigma_kind == "karras" else "uniform")


@pytest.mark.parametrize("spacing,label", [("linspace", "Uniform"), ("trailing", "SGM Uniform"), ("leading", "DDIM")])
def test_the_schedule_type_names_a1111s_schedule_with_these_timesteps(spacing, label):
    """A1111 sd_schedulers: uniform = k-diffusion get_sigmas (t from t_max to 0), sgm_uniform =
    linspace(t_max, t_min, n + 1)[:-1], ddim = every 1000 // n-th sigma from index 1."""
    import numpy as np

    from sdlab.io.metadata import sampler_fields
    from sdlab.sampling import NoiseSchedule

    n = 10
    a1111 = {"Uniform": np.linspace(999, 0, n), "SGM Uniform": np.linspace(999, 0, n + 1)[:-1],
             "DDIM": np.arange(1, 1000, 1000 // n)[::-1]}
    schedule = NoiseSchedule(timestep_spacing=spacing, steps_offset=1)
    assert sampler_fields("Euler", "default", spacing)["Schedule type"] == label
    assert np.abs(np.asarray(schedule.timesteps(n), dtype=float) - a1111[label]).max() <= 1.0


# --- 4. A1111 textual-inversion files ---------------------------------------------------------

def a1111_read_embedding(path) -> tuple[str, torch.Tensor]:
    """A1111 textual_inversion.py load_from_file for a .safetensors: a flat dict whose single
    tensor is the embedding (no string_to_param or clip_g/clip_l in a flat file), named after
    the file."""
    data = load_file(str(path))
    assert "string_to_param" not in data and not ("clip_g" in data and "clip_l" in data)
    assert len(data) == 1, "embedding file has multiple terms in it"
    emb = next(iter(data.values()))
    return Path(path).stem, emb[None] if emb.dim() == 1 else emb


def test_convert_writes_an_embedding_a1111_reads(capsys, tmp_path):
    vec = torch.randn(2, 128)
    save_file({"<tri>": vec}, str(tmp_path / "learned_embeds.safetensors"))
    assert main(["convert", str(tmp_path / "learned_embeds.safetensors"), str(tmp_path / "tri.safetensors"),
                 "--to", "a1111"]) == 0
    name, emb = a1111_read_embedding(tmp_path / "tri.safetensors")
    assert name == "tri" and torch.equal(emb, vec)


def test_ones_own_tri_embedding_loads_and_its_file_name_triggers_it(tmp_path):
    from sdlab.config import GenerationConfig
    from sdlab.pipeline import Pipeline
    from sdlab.text.embeddings import save_a1111

    pipe = Pipeline.load(None, device="cpu")
    assert "tri" in pipe.c.tokenizer.get_vocab()                   # a BPE piece of the shipped vocabulary
    plain = pipe.encode_prompt(["a red tri", "a red triangle"])
    width = pipe.c.text_encoder.config.hidden_size
    save_a1111(tmp_path / "tri.safetensors", "tri", torch.randn(2, width) * 0.5, step=100)
    assert pipe_tokens(pipe, tmp_path / "tri.safetensors") == ["tri"]
    tri, triangle, angled = pipe.encode_prompt(["a red tri", "a red triangle", "a red <tri>"])
    assert (tri - plain[0]).abs().max() > 1e-3 and torch.equal(tri, angled)
    assert torch.equal(triangle, plain[1])                         # other words keep their meaning
    info = a1111_parse(pipe.infotext(GenerationConfig(prompt="a red tri"), 1, 64, 64))
    assert info["TI hashes"].startswith("tri: ")


def pipe_tokens(pipe, path):
    from sdlab.text.embeddings import load_embedding

    return load_embedding(pipe, path)


def test_an_a1111_pt_embedding_is_named_after_its_file(tmp_path):
    from sdlab.text.embeddings import read_embedding

    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(1, 8)}, "name": "old-name",
                "step": 5}, tmp_path / "new-name.pt")
    assert list(read_embedding(tmp_path / "new-name.pt")) == ["new-name"]


# --- 5. single-file export --------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1_layout_model(tmp_path_factory):
    """A tiny random model with the shipped SD 1.5 configs, shrunk (GroupNorm 32, as LDM)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlab.models.single_file import CONFIG_ROOT, read_json
    from sdlab.models.text_encoder_file import save_text_encoder
    from sdlab.models.tokenizer import write_clip_tokenizer_files

    src, root = CONFIG_ROOT / "sd15", tmp_path_factory.mktemp("sd1") / "model"
    torch.manual_seed(0)
    unet_cfg = {**read_json(src / "unet" / "config.json"), "block_out_channels": [32, 64], "layers_per_block": 1,
                "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "attention_head_dim": 4,
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "cross_attention_dim": 32, "sample_size": 8}
    vae_cfg = {**read_json(src / "vae" / "config.json"), "block_out_channels": [32, 32], "layers_per_block": 1,
               "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}
    text_cfg = {**read_json(src / "text_encoder" / "config.json"), "hidden_size": 32, "intermediate_size": 64,
                "num_attention_heads": 2, "num_hidden_layers": 2}
    UNet2DConditionModel.from_config(unet_cfg).save_pretrained(root / "unet")
    AutoencoderKL.from_config(vae_cfg).save_pretrained(root / "vae")
    save_text_encoder(CLIPTextModel(CLIPTextConfig.from_dict(text_cfg)), root / "text_encoder")
    write_clip_tokenizer_files(root / "tokenizer")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text((src / "scheduler" / "scheduler_config.json").read_text())
    (root / "model_index.json").write_text((src / "model_index.json").read_text())
    return root


def test_convert_to_single_file_is_read_by_diffusers(capsys, sd1_layout_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "one.safetensors"
    assert main(["convert", str(sd1_layout_model), str(out), "--to", "single-file"]) == 0
    assert (tmp_path / "one.yaml").is_file()
    single = StableDiffusionPipeline.from_single_file(str(out), original_config=str(tmp_path / "one.yaml"),
                                                      config=str(sd1_layout_model), local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False)
    folder = StableDiffusionPipeline.from_pretrained(sd1_layout_model, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, name).state_dict(), getattr(folder, name).state_dict()
        assert set(a) <= set(b) and all(torch.equal(a[k], b[k]) for k in a), name
        assert len(a) == len(b) - sum(k.endswith("position_ids") for k in b), name


def test_convert_to_single_file_refuses_with_one_line(capsys, sd1_layout_model, tmp_path):
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"mine")
    assert main(["convert", str(sd1_layout_model), str(taken), "--to", "single-file"]) == 2
    assert taken.read_bytes() == b"mine" and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["convert", str(SHIPPED), str(tmp_path / "shipped.safetensors"), "--to", "single-file"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "addition_embed_type" in err and not (tmp_path / "shipped.safetensors").exists()


# --- 6. command-line conventions --------------------------------------------------------------

def test_version_and_python_m_sdlab(capsys):
    from sdlab import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"sdlab {__version__}"
    run = subprocess.run([sys.executable, "-m", "sdlab", "--version"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == f"sdlab {__version__}"


def _parsers(parser, name="sdlab"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from _parsers(child, f"{name} {sub}")


def test_every_option_with_a_default_shows_it_in_help():
    missing, checked = [], 0
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            d = action.default
            if not action.option_strings or d is None or d is False or d == argparse.SUPPRESS or d == [] \
                    or action.help == argparse.SUPPRESS:
                continue
            formatter = parser._get_formatter()
            formatter.add_argument(action)
            text = "".join(formatter.format_help().split())             # help lines wrap, even at hyphens
            values = d if isinstance(d, (list, tuple)) else [d]
            checked += 1
            if not all("".join(str(v).split()) in text.split(action.option_strings[-1], 1)[-1] for v in values):
                missing.append(f"{name} {action.option_strings[-1]} (default {d!r})")
    assert checked > 100 and not missing, missing
