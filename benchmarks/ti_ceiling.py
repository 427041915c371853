"""How far can conditioning alone take a frozen UNet toward a new shape? (diagnostic for #4)

Textual inversion only moves input embeddings; whatever it finds, the UNet sees text-encoder
hidden states. This script skips the text encoder: it optimizes one free conditioning tensor
(all 77 hidden states, initialised from "a circle") with the usual noise-prediction loss on the
same 8 heart renders as benchmarks/personalize.py, then samples with it (CFG against the empty
prompt) and lets the oracle read the shapes. Its heart rate bounds what textual inversion can
reach on this UNet from above.

`--space input` moves the free tensor one step back: all 77 input token embeddings, passed
through the frozen text encoder (position embeddings, causal attention, final layer norm). That
is textual inversion with every position a learned vector, so comparing the two spaces tells
whether the text encoder or the number of vectors is what holds textual inversion back.

    PYTHONPATH=src python benchmarks/ti_ceiling.py --steps 1500 --n 32 [--space input]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from sdlab import GenerationConfig, Pipeline
from sdlab.training.methods.base import sample_noise
from sdlab.world import oracle

from personalize import make_data


def heart_latents(pipe, folder: Path) -> torch.Tensor:
    pixels = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32)).permute(2, 0, 1) / 127.5 - 1
              for p in sorted(folder.glob("*.png"))]
    vae = pipe.c.vae
    with torch.no_grad():
        return vae.encode(torch.stack(pixels)).latent_dist.mode() * vae.config.scaling_factor


class FreeTokenEmbeddings(torch.nn.Module):
    """Stands in for the token-embedding table: every prompt gets the same learned rows."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = torch.nn.Parameter(rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.rows.expand(input_ids.shape[0], -1, -1)


def conditioning(pipe, space: str):
    """(parameter, function giving the UNet's conditioning from it), both starting at "a circle"."""
    if space == "hidden":
        cond = torch.nn.Parameter(pipe.encode_prompt(["a circle"]).detach().clone())
        return cond, lambda: cond
    text, tok = pipe.c.text_encoder, pipe.c.tokenizer
    ids = tok(["a circle"], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    table = text.get_input_embeddings()
    free = FreeTokenEmbeddings(table(ids)[0].detach().clone())
    text.requires_grad_(False)

    def encode():
        text.embeddings.token_embedding = free     # only for this call: sampling's empty prompt needs the table
        try:
            return text(input_ids=ids).last_hidden_state
        finally:
            text.embeddings.token_embedding = table
    return free.rows, encode


def optimize(pipe, latents, steps: int, lr: float, space: str, t_min: int = 0, batch: int = 4) -> torch.Tensor:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.c.scheduler_config)
    param, encode = conditioning(pipe, space)
    opt = torch.optim.Adam([param], lr=lr)
    pipe.c.unet.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        noise, t = sample_noise(latents.shape[1:], [step * batch + i for i in range(batch)],
                                sched.config.num_train_timesteps)
        t = t_min + t % (sched.config.num_train_timesteps - t_min)     # --t-min: only the noisier steps
        noisy = sched.add_noise(latents[idx], noise, t)
        target = sched.get_velocity(latents[idx], noise, t) if sched.config.prediction_type == "v_prediction" else noise
        pred = pipe.c.unet(noisy, t, encoder_hidden_states=encode().expand(batch, -1, -1)).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    with torch.no_grad():
        return encode().detach()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--space", choices=("hidden", "input"), default="hidden",
                   help="optimize the 77 hidden states the UNet sees, or the 77 input embeddings before the text encoder")
    p.add_argument("--t-min", type=int, default=0, help="train only on timesteps >= this (0: all)")
    p.add_argument("--cfg-scales", type=lambda v: [float(x) for x in v.split(",")], default=[7.5],
                   help="comma-separated CFG scales to sample at, e.g. 1,3,7.5")
    p.add_argument("--out", default="runs/ti_ceiling")
    args = p.parse_args()
    torch.set_num_threads(1)
    pipe = Pipeline.load(device="cpu")
    data = make_data(Path(args.out) / "data", "x")
    t0 = time.time()
    cond = optimize(pipe, heart_latents(pipe, data), args.steps, args.lr, args.space, args.t_min)
    minutes = round((time.time() - t0) / 60, 2)
    save_file({"cond": cond.contiguous()}, str(Path(args.out) / f"cond-{args.space}-t{args.t_min}.safetensors"))
    for cfg_scale in args.cfg_scales:
        shapes = []
        for i in range(args.n):
            image = pipe.generate(GenerationConfig("", seed=100 + i, steps=20, cfg_scale=cfg_scale, sampler="Euler a"),
                                  cond=cond).images[0]
            obj = oracle.read(image).main
            shapes.append(obj.shape if obj else None)
        row = {"space": args.space, "t_min": args.t_min, "steps": args.steps, "lr": args.lr, "minutes": minutes, "n": args.n,
               "cfg_scale": cfg_scale, "heart": sum(s == "heart" for s in shapes) / args.n,
               "shapes": dict(sorted(Counter(map(str, shapes)).items()))}
        print(json.dumps(row), flush=True)
        with open(Path(args.out) / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    main()
