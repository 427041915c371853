"""Train the noise-aware shape classifier used for classifier guidance.

Single-object scenes (seen and held-out colour pairs) are rendered, encoded once with the
model's VAE, and noised with the model's own schedule at random timesteps; the classifier
learns the shape from (x_t, t). `sdlab world train-classifier` runs this.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from ..guidance.classifier import LatentClassifier
from ..sampling import NoiseSchedule
from ..world import spec
from ..world.scene import SceneSampler
from .data import render_batch

EVAL_TIMESTEPS = (0, 250, 500, 750, 900)


def encode_scenes(pipe, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents, shape labels) of `n` rendered single-object scenes of the named shapes
    (no unnamed silhouettes: they have no label)."""
    rng = random.Random(seed)
    samplers = [SceneSampler(split="train", two_object_prob=0.0, generic_prob=0.0),
                SceneSampler(split="held_out", two_object_prob=0.0)]
    latents, labels = [], []
    for i in range(0, n, 256):
        scenes, x = render_batch(samplers[(i // 256) % 2], rng, min(256, n - i))
        latents.append(pipe.encode_image(x).cpu())
        labels += [spec.BASE_SHAPES.index(s.objects[0].shape) for s in scenes]
    return torch.cat(latents), torch.tensor(labels)


def cached_scenes(pipe, cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents, shape labels) of the single-object scenes in a base-recipe latent
    cache (runs/.../latents.safetensors + .jsonl, written by the UNet stage, recipe/unet.py)."""
    import json

    from safetensors.torch import load_file

    raw = load_file(str(cache))["latents"].float()
    scenes = [json.loads(line) for line in Path(cache).with_suffix(".jsonl").read_text().splitlines()]
    keep = [i for i, s in enumerate(scenes) if len(s["objects"]) == 1 and s["objects"][0]["shape"] in spec.BASE_SHAPES]
    labels = torch.tensor([spec.BASE_SHAPES.index(scenes[i]["objects"][0]["shape"]) for i in keep])
    return raw[keep] * pipe.c.vae.config.scaling_factor, labels


def noised(x0: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, gen: torch.Generator) -> torch.Tensor:
    """x0 noised to integer timesteps t as the model was trained (schedule.add_noise), noise from `gen`."""
    return schedule.add_noise(x0, torch.randn(x0.shape, generator=gen), t)


@torch.no_grad()
def accuracy_by_timestep(model, latents, labels, schedule, seed: int = 0) -> dict[int, float]:
    gen, out = torch.Generator().manual_seed(seed), {}
    for t in EVAL_TIMESTEPS:
        tt = torch.full((len(latents),), t)
        pred = model(noised(latents, tt, schedule, gen), tt.float()).argmax(-1)
        out[t] = round((pred == labels).float().mean().item(), 4)
    return out


def train_classifier(pipe, out: str | Path, *, minutes: float = 10, n: int = 20000, batch: int = 256,
                     lr: float = 1e-3, seed: int = 0, latent_cache: Path | None = None, log=print) -> dict:
    """Train on `n` encoded scenes (or a recipe's latent cache) for `minutes`; save to `out`;
    returns the eval report (accuracy by timestep on 1024 fresh scenes)."""
    torch.manual_seed(seed)
    if latent_cache is not None:
        latents, labels = cached_scenes(pipe, latent_cache)
    else:
        log(f"encoding {n} scenes with the model's VAE")
        latents, labels = encode_scenes(pipe, n, seed)
    val_latents, val_labels = encode_scenes(pipe, 1024, seed + 1)
    schedule = pipe.schedule
    model = LatentClassifier(list(spec.BASE_SHAPES), in_channels=latents.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen, start, step = torch.Generator().manual_seed(seed), time.time(), 0
    while time.time() - start < minutes * 60:
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=gen)
        logits = model(noised(latents[idx], t, schedule, gen), t.float())
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log(f"classifier step {step} loss {loss.item():.4f}")
    model.eval()
    report = {"steps": step, "minutes": round((time.time() - start) / 60, 2), "train_scenes": len(latents),
              "val_accuracy_by_timestep": accuracy_by_timestep(model, val_latents, val_labels, schedule)}
    model.config["training"] = report
    model.config["model_hash"] = pipe.c.model_hash          # whose latents it reads (classifier_guidance checks)
    model.save(out)
    log(f"classifier saved to {out}: {report}")
    return report
