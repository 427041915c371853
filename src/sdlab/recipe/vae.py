"""Stage 1 of the base recipe: the AutoencoderKL, trained on fresh renders; then stage 1b, its
decoder fine-tuned with the encoder frozen.

Loss: object-weighted L1 + MSE on pixels plus a tiny KL term (1e-8), as the calibration
notes found best for flat colours; readback is measured with the oracle.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..world.metrics import accuracy
from ..world.scene import SceneSampler
from . import architecture
from .data import object_weights, render_batch, to_images
from .stages import Stage, build_model, load, optimizer_step, run_timed


def readback(vae, n: int = 256, seed: int = 1234) -> dict[str, float]:
    """Oracle accuracy of VAE reconstructions of fresh renders."""
    scenes, x = render_batch(SceneSampler(), random.Random(seed), n)
    dev = next(vae.parameters()).device
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(c.to(dev)).latent_dist.mode()).sample.cpu() for c in x.split(64)])
    return accuracy(scenes, to_images(rec))


def train_vae(run_dir: Path, minutes: float, batch: int = 16, lr: float = 1e-3, log=print) -> Path:
    stage, dev = Stage(run_dir, "vae"), architecture.train_device()
    vae = stage.model("vae", architecture.build_vae, dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    stage.restore_optimizer(opt)
    rng, _ = stage.random(17)
    sampler = SceneSampler()

    def step():
        x = render_batch(sampler, rng, batch)[1].to(dev)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        return optimizer_step(opt, reconstruction_loss(rec, x) + 1e-8 * post.kl().mean())

    run_timed("vae", minutes, stage.progress, step, stage.save, log)
    return _finish("vae", stage, vae, log)


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Object-weighted L1 + MSE, so small shapes are not averaged away."""
    return (object_weights(x) * ((rec - x).abs() + (rec - x) ** 2)).mean()


def _finish(name: str, stage: Stage, vae, log) -> Path:
    """Measure oracle readback of reconstructions and write the final checkpoint."""
    stage.progress["readback"] = readback(vae)
    log(f"{name} readback {stage.progress['readback']}")
    return stage.save()


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def finetune_decoder(run_dir: Path, minutes: float, batch: int = 16, lr: float = 5e-4,
                     latent_noise: float = 0.05, log=print) -> Path:
    """Stage 1b: train only the decoder (encoder frozen, so the UNet's latents stay valid),
    with an edge loss for sharp corners and small latent noise for robustness to samples."""
    stage, dev = Stage(run_dir, "vae_decoder"), architecture.train_device()
    vae = stage.model("vae", lambda: build_model(load(run_dir, "vae")["models"]["vae"]), dev)
    opt = torch.optim.AdamW(list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()),
                            lr=lr, weight_decay=0.0)
    stage.restore_optimizer(opt)
    rng, _ = stage.random(31)
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

    run_timed("decoder", minutes, stage.progress, step, stage.save, log)
    return _finish("decoder", stage, vae, log)


def final_vae(run_dir: Path):
    """The VAE the model ships: the fine-tuned decoder's when that stage ran, else stage 1's."""
    state = load(run_dir, "vae_decoder") or load(run_dir, "vae")
    return build_model(state["models"]["vae"])
