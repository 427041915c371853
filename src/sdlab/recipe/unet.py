"""Stage 3 of the base recipe: the UNet, on cached VAE latents of rendered scenes.

v-prediction on a zero-terminal-SNR schedule (Lin et al. 2023), 10 % caption dropout for
classifier-free guidance (Ho & Salimans 2022), EMA weights. The text encoder starts from
the CLIP pair's text tower and trains with the UNet, as the LDM text transformer did
(Rombach et al. 2022): contrastive pre-training alone leaves words such as "left" and
"right" nearly indistinguishable, and a frozen encoder cannot give the UNet what it lacks.
`caption_mismatch` gives that share of the samples another scene's caption, as web alt-text often
describes something else: with the world's exact captions the conditional model alone follows
prompts, and guidance adds nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

from ..io.atomic import atomic_save, atomic_write_text
from ..sampling.schedule import NoiseSchedule
from ..world.captions import caption
from ..world.scene import Scene, SceneSampler
from . import architecture
from .data import render_batch
from .stages import Stage, build_model, load, optimizer_step, run_timed

CAPTION_DROPOUT = 0.1
TEXT_LR_SCALE = 0.5          # the pre-trained text encoder moves at half the UNet's rate
WARMUP_STEPS = 300
LATENTS = "latents.safetensors"


def build_latent_cache(run_dir: Path, vae, n: int, seed: int = 7, log=print):
    """Render `n` training scenes, encode them once; returns (scenes, latents, scale). The
    cache is RUN/latents.safetensors (fp16) with its scenes in latents.jsonl, written atomically."""
    path = Path(run_dir) / LATENTS
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
    atomic_write_text(path.with_suffix(".jsonl"), "\n".join(json.dumps(s.to_dict()) for s in scenes))
    atomic_save(path, lambda tmp: save_file({"latents": lat.half().contiguous()}, str(tmp)))   # last: marks it done
    return scenes, lat, 1.0 / lat.std().item()


def training_prompt(scenes: list[Scene], i: int, rng: random.Random, mismatch: float = 0.0) -> str:
    """Scene i's training caption: empty with CAPTION_DROPOUT, a random scene's with `mismatch`
    (rng is not drawn for it at 0, so the recipe's own runs keep their random stream), else its own."""
    if rng.random() < CAPTION_DROPOUT:
        return ""
    if mismatch and rng.random() < mismatch:
        i = rng.randrange(len(scenes))
    return caption(scenes[i], rng)


def encode_text(text_encoder, tok, prompts: list[str]) -> torch.Tensor:
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(text_encoder.device)
    return text_encoder(ids).last_hidden_state


def clip_text_tower(run_dir: Path) -> CLIPTextModel:
    """The CLIP pair's text tower as a CLIPTextModel: where the jointly trained encoder starts."""
    clip = build_model(load(run_dir, "clip")["models"]["clip"])
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    return text


def make_ema(unet, text_encoder) -> EMAModel:
    return EMAModel(list(unet.parameters()) + list(text_encoder.parameters()), decay=0.9995, use_ema_warmup=True,
                    power=0.75)


def train_unet(run_dir: Path, minutes: float, batch: int = 64, lr: float = 6e-4, cache_size: int = 60000,
               caption_mismatch: float = 0.0, log=print) -> Path:
    run_dir, dev = Path(run_dir), architecture.train_device()
    stage = Stage(run_dir, "unet")
    tok = CLIPTokenizer.from_pretrained(run_dir / "tokenizer")
    text_encoder = stage.model("text_encoder", lambda: clip_text_tower(run_dir), dev)
    text_encoder.train()
    vae = build_model(load(run_dir, "vae")["models"]["vae"]).to(dev)    # stage 1's encoder, which 1b kept
    scenes, latents, scale = build_latent_cache(run_dir, vae, cache_size, log=log)
    del vae
    schedule = NoiseSchedule.from_config(architecture.scheduler_config())
    unet = stage.model("unet", architecture.build_unet, dev)
    opt = torch.optim.AdamW([{"params": unet.parameters(), "lr": lr, "scale": 1.0},
                             {"params": text_encoder.parameters(), "lr": lr * TEXT_LR_SCALE, "scale": TEXT_LR_SCALE}],
                            weight_decay=0.01)
    progress = stage.progress
    if not stage.restore_optimizer(opt):
        progress["optimizer_start"] = progress["step"]          # warm up a fresh optimizer again
    progress.setdefault("scaling_factor", scale)
    progress.setdefault("caption_mismatch", caption_mismatch)       # train_model refuses a resume that differs
    latents = (latents * progress["scaling_factor"]).to(dev)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    stage.restore_ema(make_ema(unet, text_encoder))
    stage.ema.to(dev)
    rng, gen = stage.random(0)

    def step():
        idx = torch.randint(0, len(scenes), (batch,), generator=gen)
        x0 = latents[idx.to(dev)]
        prompts = [training_prompt(scenes, i, rng, caption_mismatch) for i in idx.tolist()]
        cond = encode_text(text_encoder, tok, prompts)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=gen).to(dev)
        pred = unet(schedule.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, schedule.target(x0, noise, t))
        warm = min(1.0, (progress["step"] - progress.get("optimizer_start", 0) + 1) / WARMUP_STEPS)
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"] * warm
        value = optimizer_step(opt, loss, params, clip=1.0)
        stage.ema.step(params)
        return value

    run_timed("unet", minutes, progress, step, stage.save, log, save_every=600)
    return stage.save()


def ema_models(state: dict) -> tuple:
    """(UNet, text encoder) of a UNet-stage checkpoint with the EMA weights, when it has them."""
    unet, text_encoder = build_model(state["models"]["unet"]), build_model(state["models"]["text_encoder"])
    if "ema" in state:
        ema = make_ema(unet, text_encoder)
        ema.load_state_dict(state["ema"])
        ema.copy_to(list(unet.parameters()) + list(text_encoder.parameters()))
    return unet, text_encoder
