"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet (and optionally the text
encoder) on a few images captioned with a rare identifier ("a sks shape"), with a
prior-preservation loss on images of the class ("a shape") that the model itself
generated before training, so the class keeps its meaning (less language drift).

Class images are cached in `class_data_dir` (default OUTPUT/class_images): a rerun or a
resume reuses them. Saves the tuned model as a diffusers folder `OUTPUT/model`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import _check_float, _check_int
from ...errors import ConfigError
from ..data import ImageDataset, read_examples, sample_index, sample_seed
from .base import Batch, DiffusionMethod, native_resolution, save_model_folder

CLASS_SEED = 1_000_000


@dataclass(frozen=True)
class DreamBoothOptions:
    class_prompt: str | None = None
    class_data_dir: str | None = None
    num_class_images: int = 50
    prior_loss_weight: float = 1.0
    prior_preservation: bool = True
    text_encoder: bool = False
    class_sampling_steps: int = 25

    def __post_init__(self):
        if self.prior_preservation and not self.class_prompt:
            raise ConfigError("prior preservation needs class_prompt (e.g. --class-prompt 'a shape'), "
                              "or turn it off (--no-prior-preservation)")
        _check_int("num_class_images", self.num_class_images, 1, 100000)
        _check_float("prior_loss_weight", self.prior_loss_weight, 0.0, 100.0)
        _check_int("class_sampling_steps", self.class_sampling_steps, 1, 1000)


class DreamBooth(DiffusionMethod):
    name = "dreambooth"
    train_unet = True

    def __init__(self, options: DreamBoothOptions | None = None):
        self.options = options or DreamBoothOptions(prior_preservation=False)
        self.train_text_encoder = self.options.text_encoder
        self.class_data = None

    def prepare_modules(self) -> None:
        self.c.unet.requires_grad_(True)
        if self.train_text_encoder:
            self.c.text_encoder.requires_grad_(True)
        if self.options.prior_preservation:
            folder = Path(self.options.class_data_dir or Path(self.config.output_dir) / "class_images")
            if self.accelerator.is_main_process:
                generate_class_images(self.c, self.options, folder)
            self.accelerator.wait_for_everyone()
            res = self.config.resolution or native_resolution(self.c)
            self.class_data = ImageDataset(read_examples(folder, self.options.class_prompt)[: self.options.num_class_images],
                                           res, center_crop=True)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Instance loss + prior_loss_weight * class (prior-preservation) loss."""
        loss = self.per_sample_loss(batch.pixels, batch.texts, batch.seeds).mean()
        if self.class_data is None:
            return loss
        seed = self.config.seed + CLASS_SEED
        pixels, seeds = [], []
        for p in batch.positions:
            s = sample_seed(seed, p)
            pixels.append(self.class_data.item(sample_index(len(self.class_data), seed, p), random.Random(s))[0])
            seeds.append(s)
        prior = self.per_sample_loss(torch.stack(pixels), [self.options.class_prompt] * len(seeds), seeds).mean()
        return loss + self.options.prior_loss_weight * prior

    def save(self, output_dir: Path) -> list[Path]:
        return [save_model_folder(self.c, Path(output_dir) / "model")]


@torch.no_grad()
def generate_class_images(components, options: DreamBoothOptions, folder: Path) -> int:
    """Fill `folder` up to num_class_images samples of the class prompt from the model
    itself (image i uses seed i, so a cache is the same whoever fills it); returns how many
    were made."""
    from ...config import GenerationConfig
    from ...io.atomic import atomic_save
    from ...pipeline import Pipeline

    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(options.num_class_images) if not (folder / f"class-{i:05d}.png").exists()]
    if not missing:
        return 0
    pipe = Pipeline(components)
    for i in missing:
        cfg = GenerationConfig(options.class_prompt, steps=options.class_sampling_steps, seed=i)
        image = pipe.generate(cfg).images[0]
        atomic_save(folder / f"class-{i:05d}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))
    return len(missing)
