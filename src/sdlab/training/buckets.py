"""Aspect-ratio buckets (NovelAI's "aspect ratio bucketing", 2022; kohya-ss `--enable_bucket`).

Instead of cropping every image to a square, each image goes to the bucket, a (width, height)
of about the training area, whose aspect ratio is nearest its own; it is resized to cover the
bucket and cropped by at most a sliver. A micro-batch holds images of one bucket only.

The order is a pure function of (seed, chunk index), like the square path's: an epoch shuffles
each bucket, cuts it into chunks of one micro-batch (a bucket's last chunk is filled up from
its own start), and shuffles the chunks. A resumed or multi-process run draws the same chunks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """(width, height) buckets: sides multiples of `step` between resolution / 2 and
    2 x resolution, each the largest area up to resolution^2 for its width (kohya's defaults)."""
    if resolution % step:
        raise ConfigError(f"aspect buckets need a resolution that is a multiple of {step} (what this model's UNet "
                          f"and VAE divide by), got {resolution}")
    lo, hi = max(step, resolution // 2 // step * step), 2 * resolution
    out = []
    for w in range(lo, hi + 1, step):
        h = min(hi, resolution * resolution // w // step * step)
        if h >= lo:
            out.append((w, h))
    return out


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) to `size`'s; the larger on ties."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


@dataclass(frozen=True)
class BucketPlan:
    """Which dataset indices make up each micro-batch ("chunk") when batches are bucketed."""

    groups: tuple[tuple[int, ...], ...]      # dataset indices per bucket (non-empty)
    batch: int
    seed: int

    @classmethod
    def of(cls, sizes: list[tuple[int, int]], batch: int, seed: int) -> "BucketPlan":
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            by_size.setdefault(size, []).append(i)
        return cls(tuple(tuple(by_size[s]) for s in sorted(by_size)), batch, seed)

    @property
    def chunks_per_epoch(self) -> int:
        return sum(-(-len(g) // self.batch) for g in self.groups)

    def chunk(self, index: int) -> tuple[int, ...]:
        """The dataset indices of global chunk `index` (epochs back to back)."""
        epoch, offset = divmod(index, self.chunks_per_epoch)
        return _epoch_chunks(self, epoch)[offset]


@functools.lru_cache(maxsize=4)
def _epoch_chunks(plan: BucketPlan, epoch: int) -> tuple[tuple[int, ...], ...]:
    chunks = []
    for b, group in enumerate(plan.groups):
        g = torch.Generator().manual_seed(plan.seed * 100_003 + epoch * 1_009 + b)
        order = [group[i] for i in torch.randperm(len(group), generator=g).tolist()]
        n = -(-len(order) // plan.batch) * plan.batch
        filled = [order[i % len(order)] for i in range(n)]
        chunks += [tuple(filled[i:i + plan.batch]) for i in range(0, n, plan.batch)]
    g = torch.Generator().manual_seed(plan.seed * 100_003 + epoch)
    return tuple(chunks[i] for i in torch.randperm(len(chunks), generator=g).tolist())
