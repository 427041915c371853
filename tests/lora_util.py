"""Helpers shared by the LoRA tests: one UNet output, and the check that a run's two files
(diffusers and kohya layouts) change the model alike in sdlab and in plain diffusers."""

from __future__ import annotations

import torch

from sdlab.models import lora as lora_files


def unet_out(unet, text_encoder, tokenizer) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ids = tokenizer(["a red circle"], padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=text_encoder(ids)[0]).sample


def assert_files_load_alike(out, model_dir) -> None:
    """Both layouts under `out` give one UNet output in sdlab (and come out again), and
    diffusers' `load_lora_weights` reads each to that same output."""
    from diffusers import StableDiffusionPipeline

    from sdlab.pipeline import Pipeline

    pipe = Pipeline.load(model_dir, device="cpu")
    base = unet_out(pipe.c.unet, pipe.c.text_encoder, pipe.c.tokenizer)
    outs = []
    for name in ("lora/pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        handle = lora_files.apply_lora(pipe, out / name, scale=1.0)
        outs.append(unet_out(pipe.c.unet, pipe.c.text_encoder, pipe.c.tokenizer))
        handle.remove()
    assert torch.allclose(unet_out(pipe.c.unet, pipe.c.text_encoder, pipe.c.tokenizer), base, atol=1e-6)
    a, b = outs
    assert torch.allclose(a, b, atol=1e-6) and (a - base).abs().max() > 1e-4
    for name in ("lora", "lora_kohya.safetensors"):
        dp = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
        dp.load_lora_weights(str(out / name))
        assert torch.allclose(unet_out(dp.unet, dp.text_encoder, dp.tokenizer), a, atol=1e-5), name
