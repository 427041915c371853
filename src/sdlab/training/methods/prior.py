"""Prior preservation (Ruiz et al. 2023, DreamBooth): alongside the instance images, train on
images of the class that the model itself generated before training, each with its own
prompt, so the class keeps its meaning (less language drift). Shared by DreamBooth and LoRA.

Class images are cached in `class_data_dir` (default OUTPUT/class_images) with their prompts
in `metadata.jsonl`: a rerun or a resume reuses them. Several class prompts may be given
(image i uses prompt i mod k), so the prior can cover the model's range rather than one
phrase. A `class_data_dir` of one's own with `metadata.jsonl` (regularisation images with
captions, as kohya users keep them) is used as it is when no class prompt is given.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch

from ...errors import ConfigError
from ..data import ImageDataset, read_examples, sample_index, sample_seed
from .base import Batch, native_resolution
from .prior_options import PriorOptions

CLASS_SEED = 1_000_000
CLASS_IMAGE = re.compile(r"class-\d{5}\.png")      # the names generate_class_images writes


class PriorPreservation:
    """Mixin for a DiffusionMethod whose options are PriorOptions: `prepare_prior()` in
    prepare_modules, and the loss becomes instance loss + prior_loss_weight * class loss."""

    class_data: ImageDataset | None = None

    def prepare_prior(self) -> None:
        if not self.options.prior_preservation:
            return
        folder = Path(self.options.class_data_dir or Path(self.config.output_dir) / "class_images")
        if self.accelerator.is_main_process and self.options.class_prompts:
            generate_class_images(self.c, self.options, folder)
        self.accelerator.wait_for_everyone()
        try:
            examples = read_examples(folder)
        except ConfigError as err:
            raise ConfigError(f"class data: {err}; or give --class-prompt to generate class images there") from err
        res = self.config.resolution or native_resolution(self.c)
        self.class_data = ImageDataset(examples[: self.options.num_class_images], res, center_crop=True)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Instance loss + prior_loss_weight * class (prior-preservation) loss."""
        loss = self.per_sample_loss(batch.pixels, batch.texts, batch.seeds, batch.latents).mean()
        if self.class_data is None:
            return loss
        seed = self.config.seed + CLASS_SEED
        pixels, texts, seeds = [], [], []
        for p in batch.positions:
            s = sample_seed(seed, p)
            image, text, _ = self.class_data.item(sample_index(len(self.class_data), seed, p), random.Random(s))
            pixels.append(image)
            texts.append(text)
            seeds.append(s)
        prior = self.per_sample_loss(torch.stack(pixels), texts, seeds).mean()
        return loss + self.options.prior_loss_weight * prior


@torch.no_grad()
def generate_class_images(components, options: PriorOptions, folder: Path) -> int:
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
    own = sorted(name for name in cached if not CLASS_IMAGE.fullmatch(name))
    if own:
        raise ConfigError(f"class data folder '{folder}' lists images of its own in metadata.jsonl ({own[0]}, ...); "
                          "use it without --class-prompt, or give another --class-data-dir for generated class images")
    missing = [(i, name) for i, (name, prompt) in enumerate(wanted.items())
               if cached.get(name) != prompt or not (folder / name).exists()]
    pipe = Pipeline(components) if missing else None
    for seed, name in missing:
        image = pipe.generate(GenerationConfig(wanted[name], steps=options.class_sampling_steps, seed=seed)).images[0]
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
