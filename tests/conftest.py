"""Shared fixtures: one CPU thread per test process, and a tiny random shapes-world model."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run faster on one thread, and CI machines have only two cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight Stable Diffusion folder with the real architecture types (UNet,
    AutoencoderKL, CLIP text model, world tokenizer, zero-SNR v-prediction scheduler)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdlab.recipe import architecture
    from sdlab.recipe.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer(root / "tok")
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.eos_token_id))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(root / "tok"),
                                   unet=unet, scheduler=EulerDiscreteScheduler(**architecture.scheduler_config()),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = root / "tiny-sd"
    pipe.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def lora_file(tiny_model_dir, tmp_path_factory):
    """A 3-step LoRA (all layers, rank 2) of the tiny model, kohya layout."""
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


@pytest.fixture(scope="session")
def inpaint_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with an SD 1.5 inpainting UNet (the shipped sd15 config with in_channels 9,
    shrunk) and SD 1.5's epsilon schedule, saved as diffusers' StableDiffusionInpaintPipeline."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

    from sdlab.models.single_file import CONFIG_ROOT, read_json
    from sdlab.pipeline import Pipeline

    base = Pipeline.load(tiny_model_dir)
    cfg = read_json(CONFIG_ROOT / "sd15" / "unet" / "config.json")
    cfg.update(in_channels=9, block_out_channels=[16, 16, 32, 32], layers_per_block=1, norm_num_groups=8,
               cross_attention_dim=32, attention_head_dim=2, sample_size=8)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg)
    sched = EulerDiscreteScheduler.from_config(read_json(CONFIG_ROOT / "sd15" / "scheduler" / "scheduler_config.json"))
    ref = StableDiffusionInpaintPipeline(vae=base.c.vae, text_encoder=base.c.text_encoder, tokenizer=base.c.tokenizer,
                                         unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
    out = tmp_path_factory.mktemp("inpaint-model") / "tiny-sd-inpainting"
    ref.save_pretrained(out, safe_serialization=True)
    return out
