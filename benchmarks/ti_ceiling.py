"""How far can conditioning alone take a frozen UNet toward a new shape? (diagnostic for #4)

Textual inversion only moves input embeddings; whatever it finds, the UNet sees text-encoder
hidden states. This script skips the text encoder: it optimizes one free conditioning tensor
(all 77 hidden states, initialised from "a circle") with the usual noise-prediction loss on the
same 8 heart renders as benchmarks/personalize.py, then samples with it (CFG against the empty
prompt) and lets the oracle read the shapes. Its heart rate bounds what textual inversion can
reach on this UNet from above.

    PYTHONPATH=src python benchmarks/ti_ceiling.py --steps 1500 --n 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

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


def optimize(pipe, latents, steps: int, lr: float, batch: int = 4) -> torch.Tensor:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.c.scheduler_config)
    cond = torch.nn.Parameter(pipe.encode_prompt(["a circle"]).detach().clone())
    opt = torch.optim.Adam([cond], lr=lr)
    pipe.c.unet.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        noise, t = sample_noise(latents.shape[1:], [step * batch + i for i in range(batch)],
                                sched.config.num_train_timesteps)
        noisy = sched.add_noise(latents[idx], noise, t)
        target = sched.get_velocity(latents[idx], noise, t) if sched.config.prediction_type == "v_prediction" else noise
        pred = pipe.c.unet(noisy, t, encoder_hidden_states=cond.expand(batch, -1, -1)).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    return cond.detach()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--out", default="runs/ti_ceiling")
    args = p.parse_args()
    torch.set_num_threads(1)
    pipe = Pipeline.load(device="cpu")
    data = make_data(Path(args.out) / "data", "x")
    t0 = time.time()
    cond = optimize(pipe, heart_latents(pipe, data), args.steps, args.lr)
    shapes = []
    for i in range(args.n):
        image = pipe.generate(GenerationConfig("", seed=100 + i, steps=20, cfg_scale=7.5, sampler="Euler a"),
                              cond=cond).images[0]
        obj = oracle.read(image).main
        shapes.append(obj.shape if obj else None)
    row = {"steps": args.steps, "lr": args.lr, "minutes": round((time.time() - t0) / 60, 2), "n": args.n,
           "heart": sum(s == "heart" for s in shapes) / args.n,
           "shapes": {s: shapes.count(s) for s in sorted(set(map(str, shapes)))}}
    print(json.dumps(row), flush=True)
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
