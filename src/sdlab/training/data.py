"""Training images: a folder with `metadata.jsonl` captions, or with a caption file beside
each image (`0001.png` + `0001.txt`, as kohya-ss and most trainers read), or a folder plus one
prompt; or kohya-ss's layout of subfolders `N_prompt`, whose images count N times an epoch.

Any format Pillow reads; EXIF orientation applied; RGBA/LA/P/CMYK/L/I;16 converted to RGB
(sdlab.io.images). Each item is resized (short side to the resolution), then centre- or
randomly cropped and optionally flipped with a `random.Random` the loop seeds per sample,
so a resumed run sees exactly the same pixels.
"""

from __future__ import annotations

import functools
import json
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, ImageReadError
from ..io.images import load_image
from .buckets import nearest_bucket

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".tga", ".ppm", ".jfif"}
CAPTION_SUFFIXES = (".txt", ".caption")
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")        # kohya-ss: "10_sks dog" = 10 repeats, prompt "sks dog"


@dataclass(frozen=True)
class Example:
    path: Path
    text: str | tuple[str, ...]     # several captions: one is drawn each time the image is used


def read_examples(folder: str | Path, instance_prompt: str | None = None,
                  captions_needed: bool = True, fallback_prompt: str | None = None) -> list[Example]:
    """Captioned examples, when no `instance_prompt` is given: from `metadata.jsonl`
    (file_name, text), else from a caption file beside each image (`NAME.txt` or
    `NAME.caption`; several non-empty lines are several captions). With `instance_prompt`:
    every image file with that prompt. With no captions at all, `fallback_prompt`, else an
    error unless `captions_needed` is False (then an empty caption). A folder of subfolders
    only is read in kohya-ss's layout (`_from_repeat_folders`)."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"data folder '{root}' does not exist or is not a folder")
    meta = root / "metadata.jsonl"
    if instance_prompt is None and meta.is_file():
        return _from_metadata(root, meta)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not files and folders:
        return _from_repeat_folders(folders, instance_prompt, captions_needed)
    if instance_prompt is None and files and any(_caption_file(p) for p in files):
        return _from_caption_files(files)
    if instance_prompt is None:
        instance_prompt = fallback_prompt
    if instance_prompt is None and not captions_needed:
        instance_prompt = ""
    if instance_prompt is None:
        raise ConfigError(f"'{root}' has no captions: give an instance prompt (--instance-prompt), a caption file "
                          "beside each image (0001.png + 0001.txt) or metadata.jsonl lines "
                          "{\"file_name\": ..., \"text\": ...}")
    if not files:
        raise ConfigError(f"no image files in '{root}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return [Example(p, instance_prompt) for p in files]


def _from_repeat_folders(folders: list[Path], instance_prompt: str | None, captions_needed: bool) -> list[Example]:
    """kohya-ss's dataset layout: subfolders `N_prompt` ("10_sks dog"), each image listed N
    times (so it counts N times an epoch), captioned by its own captions when the subfolder has
    them, else by the prompt in the folder's name (`instance_prompt`, when given, wins)."""
    out = []
    for sub in folders:
        m = REPEAT_FOLDER.match(sub.name)
        if m is None or int(m[1]) < 1:
            raise ConfigError(f"'{sub}': a data folder of subfolders is read in kohya-ss's layout, each named "
                              "N_prompt (e.g. '10_sks dog': its images count 10 times an epoch, captioned 'sks dog' "
                              "unless they have caption files); rename or move it")
        out += read_examples(sub, instance_prompt, captions_needed, fallback_prompt=m[2]) * int(m[1])
    return out


def split_examples(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples: `share` of the distinct images (at least one) held out
    for a validation loss, chosen by `seed`; every repeat of a held-out image goes with it."""
    if not share:
        return examples, []
    paths = list(dict.fromkeys(e.path for e in examples))
    n_held = max(1, round(len(paths) * share))
    if n_held >= len(paths):
        raise ConfigError(f"validation_split {share} of {len(paths)} images leaves none to train on: "
                          "lower it, or give a separate --validation-data folder")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:n_held].tolist()
    held = {paths[i] for i in order}
    first = {}
    for e in examples:
        if e.path in held:
            first.setdefault(e.path, e)
    return [e for e in examples if e.path not in held], list(first.values())


def _caption_file(image: Path) -> Path | None:
    return next((c for s in CAPTION_SUFFIXES if (c := image.with_suffix(s)).is_file()), None)


def _from_caption_files(files: list[Path]) -> list[Example]:
    """kohya-ss style captions: every image needs its own caption file."""
    out = []
    for image in files:
        path = _caption_file(image)
        if path is None:
            names = " or ".join(image.stem + s for s in CAPTION_SUFFIXES)
            raise ConfigError(f"'{image.name}' has no caption file ({names}) while other images in "
                              f"'{image.parent}' do: caption every image, or move it out")
        try:
            lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise ConfigError(f"caption file '{path}' is not UTF-8 text ({exc.reason})") from exc
        if not lines:
            raise ConfigError(f"caption file '{path}' is empty")
        out.append(Example(image, lines[0] if len(lines) == 1 else tuple(lines)))
    return out


def _from_metadata(root: Path, meta: Path) -> list[Example]:
    out = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text = row["file_name"], row["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{meta}:{n}: each line must be JSON with 'file_name' and 'text' ({exc})") from exc
        if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            text = tuple(text)                  # several captions (as diffusers' text-to-image script takes)
        if not isinstance(name, str) or not isinstance(text, (str, tuple)):
            raise ConfigError(f"{meta}:{n}: 'file_name' must be a string and 'text' a string or a non-empty "
                              "list of strings")
        path = (root / name).resolve()
        if root.resolve() not in path.parents:
            raise ConfigError(f"{meta}:{n}: file_name '{name}' points outside the data folder")
        out.append(Example(path, text))
    if not out:
        raise ConfigError(f"{meta} lists no images")
    return out


class Item(NamedTuple):
    pixels: torch.Tensor        # (3, H, W) in [-1, 1]
    text: str
    flipped: bool               # (with the index, what a latent cache keys on: crops are centred then)


class ImageDataset:
    """Decoded, resized images with captions; `item(i, rng)` crops/flips (and picks one of
    several captions) with `rng`. Each image is cropped to a resolution x resolution square,
    or with `buckets` (sdlab.training.buckets) to the (width, height) nearest its aspect ratio."""

    def __init__(self, examples: list[Example], resolution: int, *, center_crop: bool = True,
                 random_flip: bool = False, skip_bad_images: bool = False,
                 buckets: list[tuple[int, int]] | None = None):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8 or resolution % 8:
            raise ConfigError(f"resolution must be a positive multiple of 8, got {resolution!r}")
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        self.images: list[Image.Image] = []
        self.sizes: list[tuple[int, int]] = []       # (width, height) each image is cropped to
        self.texts: list[str | tuple[str, ...]] = []
        loaded: dict[Path, tuple | None] = {}          # a repeated image (kohya's N_ folders) is read once
        for ex in examples:
            if ex.path not in loaded:
                loaded[ex.path] = self._load(ex.path, resolution, buckets, skip_bad_images)
            if loaded[ex.path] is None:
                continue
            image, size = loaded[ex.path]
            self.images.append(image)
            self.sizes.append(size)
            self.texts.append(ex.text)
        if not self.images:
            raise ConfigError("no readable training images left")

    @staticmethod
    def _load(path: Path, resolution: int, buckets, skip_bad_images: bool):
        """(image resized to cover its size, (width, height)), or None for a skipped bad file."""
        try:
            image = load_image(path)
        except ImageReadError as err:
            if not skip_bad_images:
                raise ImageReadError(f"{err} (pass --skip-bad-images to skip such files)") from err
            warnings.warn(f"skipping {err}", stacklevel=2)
            return None
        size = nearest_bucket(image.size, buckets) if buckets else (resolution, resolution)
        return _resize_to_cover(image, size), size

    def __len__(self) -> int:
        return len(self.images)

    def item(self, index: int, rng: random.Random) -> Item:
        """Example `index` cropped, maybe flipped, with one of its captions, all drawn with `rng`."""
        image, (cw, ch) = self.images[index], self.sizes[index]
        w, h = image.size
        if self.center_crop:
            left, top = (w - cw) // 2, (h - ch) // 2
        else:
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = image.crop((left, top, left + cw, top + ch))
        flipped = self.random_flip and rng.random() < 0.5
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        arr = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        text = self.texts[index]
        return Item(arr / 127.5 - 1.0, rng.choice(text) if isinstance(text, tuple) else text, flipped)


def _resize_to_cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image scaled (aspect kept) to the smallest size that covers `size`."""
    w, h = image.size
    scale = max(size[0] / w, size[1] / h)
    new = (max(size[0], round(w * scale)), max(size[1], round(h * scale)))
    return image if new == (w, h) else image.resize(new, Image.Resampling.BICUBIC)


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The shuffled order of epoch `epoch`: a pure function of (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def sample_index(n: int, seed: int, position: int) -> int:
    """Dataset index at global sample `position` (epochs of shuffled orders, back to back)."""
    epoch, offset = divmod(position, n)
    return epoch_order(n, seed, epoch)[offset]


def sample_seed(seed: int, position: int) -> int:
    """A per-sample seed for crops, flips, noise and timesteps."""
    return (seed * 1_000_003 + position * 7919 + 12345) % (2**63 - 1)
