"""Training data: every image kind Pillow reads becomes the right RGB pixels; bad input is named."""

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.errors import ConfigError, ImageReadError
from sdlab.training.data import ImageDataset, read_examples, sample_index

RED, BLUE = (220, 40, 40), (40, 80, 220)


def _marked(size=(32, 24)) -> Image.Image:
    """Blue with a red top-left quadrant: rotations and flips move the red corner."""
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, size[0] // 2, size[1] // 2))
    return img


def _exif_rotated(path):
    # stored as the image rotated by 90 degrees, with orientation 6 ("rotate 270 to view"): viewer sees _marked()
    img = _marked().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, "JPEG", quality=95, exif=exif)


def _rgba(path):
    img = _marked().convert("RGBA")
    img.putpixel((27, 23), (0, 0, 0, 0))          # transparent: composited on white
    img.save(path, "PNG")


def _cmyk(path):
    _marked().convert("CMYK").save(path, "JPEG", quality=95)


def _palette(path):
    _marked().convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(path, "GIF")


def _gray(path):
    _marked().convert("L").save(path, "PNG")


def _truncated(path):
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


CASES = [  # (name, writer, expected colour of the top-left corner, of the bottom-right corner)
    ("rot.jpg", _exif_rotated, RED, BLUE),
    ("alpha.png", _rgba, RED, (255, 255, 255)),
    ("cmyk.jpg", _cmyk, RED, BLUE),
    ("pal.gif", _palette, RED, BLUE),
    ("gray.png", _gray, (94,) * 3, (84,) * 3),
]


@pytest.mark.parametrize("name,writer,top_left,bottom_right", CASES, ids=[c[0] for c in CASES])
def test_image_kinds_become_rgb(tmp_path, name, writer, top_left, bottom_right):
    writer(tmp_path / name)
    ds = ImageDataset(read_examples(tmp_path, "a photo"), 24, center_crop=True)
    x, text, _ = ds.item(0, random.Random(0))
    assert text == "a photo" and x.shape == (3, 24, 24)
    img = ((x + 1) * 127.5).permute(1, 2, 0).numpy()
    # the 32x24 image centre-crops to columns 4..27: top-left pixel is still red (rotation undone)
    assert np.abs(img[1, 1] - np.array(top_left)).max() < 30, img[1, 1]
    assert np.abs(img[-1, -1] - np.array(bottom_right)).max() < 30, img[-1, -1]


def test_corrupt_file_is_named_or_skipped(tmp_path):
    _truncated(tmp_path / "broken.png")
    _gray(tmp_path / "ok.png")
    with pytest.raises(ImageReadError, match="broken.png.*--skip-bad-images"):
        ImageDataset(read_examples(tmp_path, "x"), 16)
    with pytest.warns(UserWarning, match="broken.png"):
        ds = ImageDataset(read_examples(tmp_path, "x"), 16, skip_bad_images=True)
    assert len(ds) == 1


def test_metadata_captions_and_errors(tmp_path):
    _marked().save(tmp_path / "a.png")
    _marked().save(tmp_path / "b.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "b.png", "text": "second"}) + "\n")
    ex = read_examples(tmp_path)
    assert [(e.path.name, e.text) for e in ex] == [("b.png", "second")]
    assert len(read_examples(tmp_path, "one prompt")) == 2      # instance prompt: every image
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "../x.png", "text": "t"}\n')
    with pytest.raises(ConfigError, match="outside the data folder"):
        read_examples(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file": "a.png"}\n')
    with pytest.raises(ConfigError, match="metadata.jsonl:1"):
        read_examples(tmp_path)
    with pytest.raises(ConfigError, match="multiple of 8"):
        ImageDataset(read_examples(tmp_path, "x"), 20)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="has no captions: give an instance prompt"):
        read_examples(empty)


def test_caption_files_beside_the_images(tmp_path):
    for name in ("a", "b", "c"):
        _marked().save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("a red sks\n")
    (tmp_path / "b.caption").write_text("\ufeffa sks\n\n  a sks on the left  \n", encoding="utf-8")  # BOM, blank line
    with pytest.raises(ConfigError, match=r"'c.png' has no caption file \(c.txt or c.caption\) while other images"):
        read_examples(tmp_path)
    (tmp_path / "c.txt").write_text("")
    with pytest.raises(ConfigError, match="c.txt' is empty"):
        read_examples(tmp_path)
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(ConfigError, match="c.txt' is not UTF-8 text"):
        read_examples(tmp_path)
    (tmp_path / "c.txt").write_text("a blue sks")
    ex = read_examples(tmp_path)
    assert [(e.path.name, e.text) for e in ex] == [("a.png", "a red sks"), ("b.png", ("a sks", "a sks on the left")),
                                                  ("c.png", "a blue sks")]
    assert {e.text for e in read_examples(tmp_path, "one prompt")} == {"one prompt"}     # the prompt wins
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "from jsonl"}) + "\n")
    assert [e.text for e in read_examples(tmp_path)] == ["from jsonl"]                  # and metadata.jsonl


def test_kohya_repeat_folders(tmp_path):
    from sdlab.training.data import split_examples

    dog, reg = tmp_path / "5_sks dog", tmp_path / "1_a red circle"
    dog.mkdir()
    reg.mkdir()
    for folder, names in ((dog, ("a", "b")), (reg, ("c",))):
        for name in names:
            _marked().save(folder / f"{name}.png")
    (reg / "c.txt").write_text("a small red circle")
    ex = read_examples(tmp_path)
    assert [(e.path.name, e.text) for e in ex] == [("c.png", "a small red circle")] + [("a.png", "sks dog"),
                                                                                       ("b.png", "sks dog")] * 5
    assert {e.text for e in read_examples(tmp_path, "x")} == {"x"}                 # the instance prompt wins
    ds = ImageDataset(ex, 16)
    assert len(ds) == 11 and ds.images[1] is ds.images[3]                         # a repeat is read once
    train_part, held = split_examples(ex, 0.34, seed=1)                            # one of three images ...
    assert len(held) == 1 and held[0].path not in {e.path for e in train_part}     # ... with all its repeats
    (tmp_path / "dog pictures").mkdir()
    with pytest.raises(ConfigError, match="dog pictures'.*kohya-ss's layout, each named N_prompt"):
        read_examples(tmp_path)


def test_several_captions_per_image_are_drawn_with_the_sample_seed(tmp_path):
    _marked().save(tmp_path / "a.png")
    captions = ["a sks", "a red sks", "a red sks on the left"]
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": captions}) + "\n")
    ds = ImageDataset(read_examples(tmp_path), 16)
    drawn = [ds.item(0, random.Random(s))[1] for s in range(30)]
    assert set(drawn) == set(captions) and drawn[7] == ds.item(0, random.Random(7))[1]
    for bad in ([], ["ok", 3], 5):
        (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": bad}) + "\n")
        with pytest.raises(ConfigError, match="a string or a non-empty list of strings"):
            read_examples(tmp_path)


def test_random_crop_and_flip_follow_the_seed(tmp_path):
    _marked((40, 24)).save(tmp_path / "wide.png")
    ds = ImageDataset(read_examples(tmp_path, "x"), 24, center_crop=False, random_flip=True)
    items = [ds.item(0, random.Random(s))[0] for s in range(12)]
    assert torch.equal(items[3], ds.item(0, random.Random(3))[0])            # same seed, same pixels
    red_left = [bool(x[0, 0, 0] > 0) for x in items]                         # red channel high at left
    assert 0 < sum(red_left) < 12                                            # flips happen, not always
    assert len({x.sum().item() for x in items}) > 2                          # crops move


def test_epoch_order_is_a_permutation():
    n = 7
    first = [sample_index(n, 5, p) for p in range(n)]
    second = [sample_index(n, 5, p) for p in range(n, 2 * n)]
    assert sorted(first) == sorted(second) == list(range(n)) and first != second
