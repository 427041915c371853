"""DreamBooth (Ruiz et al. 2023): fine-tune the whole UNet (and optionally the text
encoder) on a few images captioned with a rare identifier ("a sks shape"), with a
prior-preservation loss on images of the class ("a shape") that the model itself
generated before training, so the class keeps its meaning (less language drift).

Class images are cached in `class_data_dir` (default OUTPUT/class_images) with their prompts
in `metadata.jsonl`: a rerun or a resume reuses them. Several class prompts may be given
(image i uses prompt i mod k), so the prior can cover the model's whole range rather than one
phrase; each class image is trained with its own prompt. A `class_data_dir` of one's own
with `metadata.jsonl` (regularisation images with captions, as kohya users keep them) is used
as it is when no class prompt is given. Saves the tuned model as a diffusers folder `OUTPUT/model`.
"""

from __future__ import annotations

import json
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
    class_prompt: str | tuple[str, ...] | None = None     # one prompt or several (image i: prompt i mod k)
    class_data_dir: str | None = None
    num_class_images: int = 50
    prior_loss_weight: float = 1.0
    prior_preservation: bool = True
    text_encoder: bool = False
    class_sampling_steps: int = 25

    def __post_init__(self):
        if isinstance(self.class_prompt, list):
            object.__setattr__(self, "class_prompt", tuple(self.class_prompt))
        prompts = self.class_prompts
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ConfigError(f"class_prompt must be a non-empty string or a list of them, got {self.class_prompt!r}")
        if self.prior_preservation and not prompts and not self.class_data_dir:
            raise ConfigError("prior preservation needs class_prompt (e.g. --class-prompt 'a shape'), or a "
                              "--class-data-dir with metadata.jsonl captions, or turn it off (--no-prior-preservation)")
        _check_int("num_class_images", self.num_class_images, 1, 100000)
        _check_float("prior_loss_weight", self.prior_loss_weight, 0.0, 100.0)
        _check_int("class_sampling_steps", self.class_sampling_steps, 1, 1000)

    @property
    def class_prompts(self) -> tuple[str, ...]:
        if self.class_prompt is None:
            return ()
        return (self.class_prompt,) if isinstance(self.class_prompt, str) else tuple(self.class_prompt)


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
            if self.accelerator.is_main_process and self.options.class_prompts:
                generate_class_images(self.c, self.options, folder)
            self.accelerator.wait_for_everyone()
            if not (folder / "metadata.jsonl").is_file():
                raise ConfigError(f"class data folder '{folder}' has no metadata.jsonl: give --class-prompt to "
                                  "generate class images there, or add metadata.jsonl lines {\"file_name\": ..., \"text\": ...}")
            res = self.config.resolution or native_resolution(self.c)
            self.class_data = ImageDataset(read_examples(folder)[: self.options.num_class_images], res, center_crop=True)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Instance loss + prior_loss_weight * class (prior-preservation) loss."""
        loss = self.per_sample_loss(batch.pixels, batch.texts, batch.seeds).mean()
        if self.class_data is None:
            return loss
        seed = self.config.seed + CLASS_SEED
        pixels, texts, seeds = [], [], []
        for p in batch.positions:
            s = sample_seed(seed, p)
            image, text = self.class_data.item(sample_index(len(self.class_data), seed, p), random.Random(s))
            pixels.append(image)
            texts.append(text)
            seeds.append(s)
        prior = self.per_sample_loss(torch.stack(pixels), texts, seeds).mean()
        return loss + self.options.prior_loss_weight * prior

    def save(self, output_dir: Path) -> list[Path]:
        return [save_model_folder(self.c, Path(output_dir) / "model")]


@torch.no_grad()
def generate_class_images(components, options: DreamBoothOptions, folder: Path) -> int:
    """Fill `folder` up to num_class_images samples of the class prompts from the model
    itself (image i: prompt i mod k, seed i, so a cache is the same whoever fills it) and list
    them with their prompts in metadata.jsonl; an image cached for another prompt is made
    again. Returns how many were made."""
    from ...config import GenerationConfig
    from ...io.atomic import atomic_save
    from ...pipeline import Pipeline

    folder.mkdir(parents=True, exist_ok=True)
    prompts = options.class_prompts
    wanted = {f"class-{i:05d}.png": prompts[i % len(prompts)] for i in range(options.num_class_images)}
    cached = _cached_prompts(folder, prompts[0])
    missing = [name for name, prompt in wanted.items() if cached.get(name) != prompt or not (folder / name).exists()]
    pipe = Pipeline(components) if missing else None
    for name in missing:
        cfg = GenerationConfig(wanted[name], steps=options.class_sampling_steps, seed=list(wanted).index(name))
        image = pipe.generate(cfg).images[0]
        atomic_save(folder / name, lambda tmp, im=image: im.save(tmp, format="PNG"))
    lines = "".join(json.dumps({"file_name": name, "text": prompt}) + "\n" for name, prompt in wanted.items())
    if missing or not (folder / "metadata.jsonl").is_file():
        atomic_save(folder / "metadata.jsonl", lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    return len(missing)


def _cached_prompts(folder: Path, legacy_prompt: str) -> dict[str, str]:
    """file name -> prompt of the cached class images (a cache from before metadata.jsonl was
    written holds images of one prompt; they are taken to be of the first class prompt)."""
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        return {ex.path.name: ex.text for ex in read_examples(folder)}
    return {p.name: legacy_prompt for p in folder.glob("class-*.png")}
