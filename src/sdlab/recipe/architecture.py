"""Architecture of the shipped shapes-world model: a small but real Stable Diffusion.

AutoencoderKL with 4x downsampling (64x64 RGB -> 4x16x16 latents), a CLIP text model
pre-trained contrastively with a ViT image tower (the CLIP pair is kept for evaluation),
and a UNet2DConditionModel with cross-attention at 16x16 and 8x8 plus the pooled text
added to the time embedding. The noise schedule has zero terminal SNR with v-prediction
and trailing timesteps (Lin et al. 2023), so flat backgrounds come from the text.
"""

from __future__ import annotations

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

TEXT_DIM = 96           # with SD's 49,408-token vocabulary the text encoder is 19.8 MiB


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=4)


def unet_config() -> dict:
    return dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(40, 80, 128),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=8,
                addition_embed_type="text", addition_embed_type_num_heads=4)


def clip_config(vocab_size: int, bos_id: int, eos_id: int) -> CLIPConfig:
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
                          num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77,
                          projection_dim=TEXT_DIM, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    vision = CLIPVisionConfig(hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=4,
                              num_attention_heads=4, image_size=64, patch_size=8, projection_dim=TEXT_DIM)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=TEXT_DIM)


def scheduler_config() -> dict:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                steps_offset=1)


def train_device():
    """CUDA when available (minutes), else the CPU (hours): the recipe runs on either."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(**vae_config())


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**unet_config())


def build_clip(tokenizer) -> CLIPModel:
    return CLIPModel(clip_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
