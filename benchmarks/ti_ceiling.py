"""How far can conditioning alone take a frozen UNet toward a new shape? (a diagnostic)

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

`--per-layer` gives every cross-attention layer its own free tensor (and one more for what the
UNet's text-time embedding reads), as P+ does (Voynov et al. 2023, "extended textual
conditioning"): the bound of any per-layer textual inversion in that space.

`--concept striped` asks the same of the other reserved concept, the striped fill (8 striped
objects of the base shapes), and reads the fill instead of the shape.

    PYTHONPATH=src python benchmarks/ti_ceiling.py --steps 1500 --n 32 [--space input] [--per-layer]
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
from sdlab.world.data import export_folder
from sdlab.world.scene import SceneSampler


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


class LayerConditioning:
    """An attention processor for one cross-attention layer that attends to this layer's own
    conditioning wherever the UNet was given `bank["base"]` (so CFG's unconditional half is left
    alone), as in P+."""

    def __init__(self, name: str, bank: dict):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name, self.bank, self.inner = name, bank, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kw):
        if encoder_hidden_states is not None and "base" in self.bank:
            given = torch.tensor([torch.equal(e, self.bank["base"][0]) for e in encoder_hidden_states])
            mine = self.bank[self.name][:1].expand_as(encoder_hidden_states)
            encoder_hidden_states = torch.where(given[:, None, None], mine, encoder_hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, **kw)


def per_layer(pipe, space: str):
    """(parameters, encode) for P+: one free tensor per cross-attention layer plus the base one;
    encode() fills the bank the layers read and returns the base conditioning."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet, bank = pipe.c.unet, {}
    layers = [n for n in unet.attn_processors if n.endswith("attn2.processor")]
    unet.set_attn_processor({n: LayerConditioning(n, bank) if n in layers else AttnProcessor2_0()
                             for n in unet.attn_processors})
    pairs = {n: conditioning(pipe, space) for n in layers + ["base"]}

    def encode():
        bank.clear()
        bank.update({n: enc() for n, (_, enc) in pairs.items()})
        return bank["base"]
    return [param for param, _ in pairs.values()], encode


def optimize(pipe, latents, steps: int, lr: float, space: str, t_min: int = 0, batch: int = 4,
             layered: bool = False) -> torch.Tensor:
    sched = pipe.schedule
    params, encode = per_layer(pipe, space) if layered else conditioning(pipe, space)
    opt = torch.optim.Adam(params if layered else [params], lr=lr)
    pipe.c.unet.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        noise, t = sample_noise(latents.shape[1:], [step * batch + i for i in range(batch)],
                                sched.num_train_timesteps)
        t = t_min + t % (sched.num_train_timesteps - t_min)     # --t-min: only the noisier steps
        noisy = sched.add_noise(latents[idx], noise, t)
        target = sched.target(latents[idx], noise, t)
        pred = pipe.c.unet(noisy, t, encoder_hidden_states=encode().expand(batch, -1, -1)).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    with torch.no_grad():
        return encode().detach()          # with --per-layer the layers keep reading their own


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--space", choices=("hidden", "input"), default="hidden",
                   help="optimize the 77 hidden states the UNet sees, or the 77 input embeddings before the text encoder")
    p.add_argument("--per-layer", action="store_true",
                   help="one free tensor per cross-attention layer (P+, Voynov et al. 2023)")
    p.add_argument("--t-min", type=int, default=0, help="train only on timesteps >= this (0: all)")
    p.add_argument("--cfg-scales", type=lambda v: [float(x) for x in v.split(",")], default=[7.5],
                   help="comma-separated CFG scales to sample at, e.g. 1,3,7.5")
    p.add_argument("--concept", choices=("heart", "striped"), default="heart",
                   help="the reserved shape (8 hearts) or the reserved fill (8 striped objects of the base shapes)")
    p.add_argument("--out", default="runs/ti_ceiling")
    args = p.parse_args()
    torch.set_num_threads(1)
    pipe = Pipeline.load(device="cpu")
    data = Path(args.out) / f"data-{args.concept}"
    if args.concept == "heart":
        make_data(data, "x")
    elif not (data / "metadata.jsonl").is_file():
        export_folder(data, 8, seed=1, sampler=SceneSampler(fills=("striped",), two_object_prob=0.0))
    attr = "shape" if args.concept == "heart" else "fill"
    t0 = time.time()
    cond = optimize(pipe, heart_latents(pipe, data), args.steps, args.lr, args.space, args.t_min,
                    layered=args.per_layer)
    minutes = round((time.time() - t0) / 60, 2)
    layered = "-per-layer" if args.per_layer else ""
    save_file({"cond": cond.contiguous()},
              str(Path(args.out) / f"cond-{args.concept}-{args.space}{layered}-t{args.t_min}.safetensors"))
    for cfg_scale in args.cfg_scales:
        shapes, read = [], []
        for i in range(args.n):
            image = pipe.generate(GenerationConfig("", seed=100 + i, steps=20, cfg_scale=cfg_scale, sampler="Euler a"),
                                  cond=cond).images[0]
            obj = oracle.read(image).main
            shapes.append(obj.shape if obj else None)
            read.append(getattr(obj, attr) if obj else None)
        row = {"space": args.space, "per_layer": args.per_layer, "t_min": args.t_min, "steps": args.steps,
               "lr": args.lr, "minutes": minutes, "n": args.n,
               "cfg_scale": cfg_scale, "concept": args.concept, args.concept: read.count(args.concept) / args.n,
               "shapes": dict(sorted(Counter(map(str, shapes)).items()))}
        print(json.dumps(row), flush=True)
        with open(Path(args.out) / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    main()
