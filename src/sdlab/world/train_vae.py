"""Stage 1 of the base recipe: the AutoencoderKL, trained on fresh renders.

Loss: object-weighted L1 + MSE on pixels plus a tiny KL term (1e-8), as the calibration
notes found best for flat colours; readback is measured with the oracle.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from . import recipe
from .checkpoint import optimizer_step, resume, run_timed, save_stage
from .data import object_weights, render_batch, to_images
from .metrics import accuracy
from .scene import SceneSampler


def readback(vae, n: int = 256, seed: int = 1234) -> dict[str, float]:
    """Oracle accuracy of VAE reconstructions of fresh renders."""
    scenes, x = render_batch(SceneSampler(), random.Random(seed), n)
    dev = next(vae.parameters()).device
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(c.to(dev)).latent_dist.mode()).sample.cpu() for c in x.split(64)])
    return accuracy(scenes, to_images(rec))


def train_vae(run_dir: Path, minutes: float, batch: int = 16, lr: float = 1e-3, log=print) -> Path:
    ckpt, dev = Path(run_dir) / "vae", recipe.train_device()
    state, vae, opt = resume(ckpt, AutoencoderKL.from_pretrained, recipe.build_vae,
                             lambda m: torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0), dev)
    rng = random.Random(state["step"] + 17)
    sampler = SceneSampler()

    def step():
        x = render_batch(sampler, rng, batch)[1].to(dev)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        return optimizer_step(opt, reconstruction_loss(rec, x) + 1e-8 * post.kl().mean())

    run_timed("vae", minutes, state, step, lambda st: save_stage(ckpt, vae, opt, st), log)
    return _finish("vae", ckpt, vae, opt, state, log)


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Object-weighted L1 + MSE, so small shapes are not averaged away."""
    return (object_weights(x) * ((rec - x).abs() + (rec - x) ** 2)).mean()


def _finish(name: str, ckpt: Path, vae, opt, state: dict, log) -> Path:
    """Measure oracle readback of reconstructions and write the final checkpoint."""
    state["readback"] = readback(vae)
    log(f"{name} readback {state['readback']}")
    save_stage(ckpt, vae, opt, state)
    return ckpt


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def finetune_decoder(run_dir: Path, minutes: float, batch: int = 16, lr: float = 5e-4,
                     latent_noise: float = 0.05, log=print) -> Path:
    """Stage 1b: train only the decoder (encoder frozen, so the UNet's latents stay valid),
    with an edge loss for sharp corners and small latent noise for robustness to samples."""
    run_dir = Path(run_dir)
    ckpt, dev = run_dir / "vae_decoder", recipe.train_device()
    state, vae, opt = resume(
        ckpt, AutoencoderKL.from_pretrained, lambda: AutoencoderKL.from_pretrained(run_dir / "vae" / "model"),
        lambda m: torch.optim.AdamW(list(m.decoder.parameters()) + list(m.post_quant_conv.parameters()),
                                    lr=lr, weight_decay=0.0), dev)
    rng = random.Random(state["step"] + 31)
    sampler = SceneSampler()

    def step():
        x = render_batch(sampler, rng, batch)[1].to(dev)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
            z = z + latent_noise * z.std() * torch.randn_like(z)
        rec = vae.decode(z).sample
        loss = reconstruction_loss(rec, x)
        for er, ex in zip(_edges(rec), _edges(x)):
            loss = loss + 2.0 * (er - ex).abs().mean()
        return optimizer_step(opt, loss)

    run_timed("decoder", minutes, state, step, lambda st: save_stage(ckpt, vae, opt, st), log)
    return _finish("decoder", ckpt, vae, opt, state, log)
