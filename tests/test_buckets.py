"""Aspect-ratio buckets: the sizes, the nearest bucket, one bucket per micro-batch, an order
that is a pure function of the seed, and exact resume in the loop."""

import random

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sdlab.errors import ConfigError
from sdlab.training.buckets import BucketPlan, bucket_sizes, nearest_bucket
from sdlab.training.data import ImageDataset, read_examples


def test_sd_buckets_and_the_nearest_one():
    buckets = bucket_sizes(512, 64)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and 256 <= min(w, h) and max(w, h) <= 1024 and w * h <= 512 * 512
               for w, h in buckets)
    assert nearest_bucket((800, 600), buckets) == (576, 448)          # 4:3 -> 1.29, the nearest ratio
    assert nearest_bucket((600, 800), buckets) == (448, 576)
    assert nearest_bucket((3000, 3000), buckets) == (512, 512)
    assert nearest_bucket((4000, 500), buckets) == (1024, 256)        # beyond the widest: the widest
    with pytest.raises(ConfigError, match="multiple of 64"):
        bucket_sizes(520, 64)


def test_a_plan_batches_one_bucket_at_a_time_and_covers_every_image():
    sizes = [(4, 4)] * 5 + [(8, 2)] * 2 + [(2, 8)]
    plan = BucketPlan.of(sizes, batch=2, seed=3)
    assert plan.chunks_per_epoch == 3 + 1 + 1
    for epoch in range(3):
        chunks = [plan.chunk(epoch * 5 + k) for k in range(5)]
        assert all(len(c) == 2 and len({sizes[i] for i in c}) == 1 for c in chunks)
        assert set().union(*chunks) == set(range(8))                  # every image once an epoch (+ fill-ups)
    assert plan.chunk(7) == BucketPlan.of(sizes, batch=2, seed=3).chunk(7)     # a pure function of (seed, index)
    assert [plan.chunk(k) for k in range(5)] != [plan.chunk(k) for k in range(5, 10)]
    assert [plan.chunk(k) for k in range(5)] != [BucketPlan.of(sizes, 2, seed=4).chunk(k) for k in range(5)]


def test_images_are_cropped_to_their_bucket(tmp_path):
    for name, size in [("wide", (96, 64)), ("tall", (64, 96)), ("square", (70, 70))]:
        Image.new("RGB", size, "red").save(tmp_path / f"{name}.png")
    ds = ImageDataset(read_examples(tmp_path, "x"), 64, buckets=bucket_sizes(64, 16))
    shapes = {p.stem: tuple(ds.item(i, random.Random(0))[0].shape) for i, p in enumerate(sorted(tmp_path.iterdir()))}
    assert shapes == {"square": (3, 64, 64), "tall": (3, 80, 48), "wide": (3, 48, 80)}
    square = ImageDataset(read_examples(tmp_path, "x"), 64)
    assert {tuple(square.item(i, random.Random(0))[0].shape) for i in range(3)} == {(3, 64, 64)}


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """Six renders: two wide, two tall, two square."""
    from sdlab.world.data import export_folder

    d = export_folder(tmp_path_factory.mktemp("buckets") / "data", 6, seed=8)
    for i, p in enumerate(sorted(d.glob("*.png"))):
        Image.open(p).resize([(48, 32), (32, 48), (40, 40)][i % 3]).save(p)
    return d


def _cfg(model, data, out, **kw):
    from sdlab.training.config import TrainingConfig
    from sdlab.training.methods.lora import LoraOptions

    return TrainingConfig(method="lora", data_dir=str(data), output_dir=str(out), model=str(model), max_steps=4,
                          learning_rate=1e-2, batch_size=2, resolution=32, aspect_buckets=True, random_flip=True,
                          checkpoint_every=2, device="cpu", options=LoraOptions(rank=2), **kw)


def test_bucketed_training_batches_one_size_and_resumes_exactly(tiny_model_dir, mixed_data, tmp_path):
    from sdlab.callbacks import CancelToken
    from sdlab.errors import Cancelled
    from sdlab.training.loop import Trainer, train
    from sdlab.training.methods.lora import LoRA, LoraOptions

    trainer = Trainer(_cfg(tiny_model_dir, mixed_data, tmp_path / "look"), LoRA(LoraOptions(rank=2)))
    shapes = [trainer.micro_batch(k).pixels.shape for k in range(6)]
    assert {s[2:] for s in shapes} == {(24, 40), (40, 24), (32, 32)}     # 3:2 -> 5:3, 2:3 -> 3:5 and square
    assert all(s[0] == 2 for s in shapes)

    ref = train(_cfg(tiny_model_dir, mixed_data, tmp_path / "ref"), LoRA(LoraOptions(rank=2)))
    token = CancelToken()

    def stop(event):
        if event.step == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        train(_cfg(tiny_model_dir, mixed_data, tmp_path / "run"), LoRA(LoraOptions(rank=2)), callback=stop,
              cancel=token)
    resumed = train(_cfg(tiny_model_dir, mixed_data, tmp_path / "run"), LoRA(LoraOptions(rank=2)), resume="latest")
    assert resumed.losses == ref.losses[2:]
    a, b = (load_file(str(r.saved[1])) for r in (ref, resumed))             # the kohya files
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
