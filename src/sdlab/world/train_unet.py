"""Stage 3 of the base recipe: the UNet, on cached VAE latents of rendered scenes.

v-prediction on a zero-terminal-SNR schedule (Lin et al. 2023), 10 % caption dropout for
classifier-free guidance (Ho & Salimans 2022), EMA weights. The text encoder starts from
the CLIP pair's text tower and trains with the UNet, as the LDM text transformer did
(Rombach et al. 2022): contrastive pre-training alone leaves words such as "left" and
"right" nearly indistinguishable, and a frozen encoder cannot give the UNet what it lacks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from . import recipe
from .captions import caption
from .checkpoint import optimizer_step, resume, run_timed, save_stage
from .data import render_batch
from .scene import Scene, SceneSampler

CAPTION_DROPOUT = 0.1
TEXT_LR_SCALE = 0.5          # the pre-trained text encoder moves at half the UNet's rate
WARMUP_STEPS = 300


def build_latent_cache(run_dir: Path, vae: AutoencoderKL, n: int, seed: int = 7, log=print):
    """Render `n` training scenes, encode them once; returns (scenes, latents, scale)."""
    path = Path(run_dir) / "latents.safetensors"
    if path.exists():
        lat = load_file(path)["latents"].float()
        scenes = [Scene.from_dict(json.loads(l)) for l in (path.with_suffix(".jsonl")).read_text().splitlines()]
        return scenes, lat, 1.0 / lat.std().item()
    rng, sampler, scenes, chunks = random.Random(seed), SceneSampler(), [], []
    with torch.no_grad():
        for i in range(0, n, 256):
            sc, x = render_batch(sampler, rng, min(256, n - i))
            scenes += sc
            chunks.append(vae.encode(x.to(vae.device)).latent_dist.mode().cpu())
            if i % 10240 == 0:
                log(f"latent cache {i}/{n}")
    lat = torch.cat(chunks)
    save_file({"latents": lat.half().contiguous()}, str(path))
    path.with_suffix(".jsonl").write_text("\n".join(json.dumps(s.to_dict()) for s in scenes))
    return scenes, lat, 1.0 / lat.std().item()


def encode_text(text_encoder, tok, prompts: list[str]) -> torch.Tensor:
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(text_encoder.device)
    return text_encoder(ids).last_hidden_state


def _load_text_encoder(run_dir: Path, ckpt: Path, dev) -> tuple[CLIPTextModel, bool]:
    """The jointly trained encoder from the checkpoint, else the CLIP text tower;
    the flag says whether it came from the checkpoint."""
    joint = (ckpt / "text_encoder").exists()
    return CLIPTextModel.from_pretrained(ckpt / "text_encoder" if joint else run_dir / "text_encoder").to(dev), joint


def train_unet(run_dir: Path, minutes: float, batch: int = 64, lr: float = 6e-4, cache_size: int = 60000,
               log=print) -> Path:
    run_dir = Path(run_dir)
    ckpt = run_dir / "unet"
    dev = recipe.train_device()
    vae = AutoencoderKL.from_pretrained(run_dir / "vae" / "model").to(dev)
    tok = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
    text_encoder, joint = _load_text_encoder(run_dir, ckpt, dev)
    text_encoder.train()
    scenes, latents, scale = build_latent_cache(run_dir, vae, cache_size, log=log)
    del vae
    sched = DDPMScheduler(**recipe.scheduler_config())

    def make_optimizer(unet):
        return torch.optim.AdamW([{"params": unet.parameters(), "lr": lr, "scale": 1.0},
                                  {"params": text_encoder.parameters(), "lr": lr * TEXT_LR_SCALE,
                                   "scale": TEXT_LR_SCALE}], weight_decay=0.01)

    # A checkpoint from before joint training has a one-group optimizer: start a fresh one.
    state, unet, opt = resume(ckpt, UNet2DConditionModel.from_pretrained, recipe.build_unet, make_optimizer, dev,
                              optimizer_state=joint)
    if not (joint and (ckpt / "optimizer.pt").exists()):
        state["optimizer_start"] = state["step"]          # warm up the fresh optimizer again
    state.setdefault("scaling_factor", scale)
    latents = (latents * state["scaling_factor"]).to(dev)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = EMAModel(params, decay=0.9995, use_ema_warmup=True, power=0.75)
    if joint and (ckpt / "ema.pt").exists():
        ema.load_state_dict(torch.load(ckpt / "ema.pt", map_location="cpu", weights_only=True))
        ema.to(dev)
    gen = torch.Generator().manual_seed(1000 + state["step"])
    rng = random.Random(state["step"])

    def step():
        idx = torch.randint(0, len(scenes), (batch,), generator=gen)
        x0 = latents[idx.to(dev)]
        prompts = ["" if rng.random() < CAPTION_DROPOUT else caption(scenes[i], rng) for i in idx.tolist()]
        cond = encode_text(text_encoder, tok, prompts)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen).to(dev)
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, sched.get_velocity(x0, noise, t))
        warm = min(1.0, (state["step"] - state.get("optimizer_start", 0) + 1) / WARMUP_STEPS)
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"] * warm
        value = optimizer_step(opt, loss, params, clip=1.0)
        ema.step(params)
        return value

    def save(st):
        _save(ckpt, unet, text_encoder, opt, ema, st)

    run_timed("unet", minutes, state, step, save, log, save_every=600)
    save(state)
    return ckpt


def _save(ckpt: Path, unet, text_encoder, opt, ema: EMAModel, state: dict) -> None:
    """Checkpoint raw weights + optimizer + EMA state, and the EMA weights as models
    (`ema/` for the UNet, `text_encoder_ema/` for the text encoder)."""
    ema_unet, ema_text = recipe.build_unet(), CLIPTextModel(text_encoder.config)
    ema.copy_to(list(ema_unet.parameters()) + list(ema_text.parameters()))
    save_stage(ckpt, unet, opt, state, ema=ema_unet, extra={"ema.pt": ema.state_dict()},
               models={"text_encoder": text_encoder, "text_encoder_ema": ema_text})
