"""The shapes world: renderer, captions, splits, and the oracle's measured accuracy."""

import json
import random

import numpy as np
import pytest

from sdlab.world import oracle, spec
from sdlab.world.captions import caption, full_caption
from sdlab.world.degrade import degrade
from sdlab.world.metrics import accuracy
from sdlab.world.render import render
from sdlab.world.scene import SceneSampler, single_object_scene

EVERYTHING = SceneSampler(shapes=spec.SHAPES, fills=spec.FILLS, fill_weights=None)
N = 600


def _scenes(sampler, n, seed):
    rng = random.Random(seed)
    return [sampler.sample(rng) for _ in range(n)], rng


def test_render_is_deterministic_and_sized():
    scenes, _ = _scenes(SceneSampler(), 5, 0)
    again, _ = _scenes(SceneSampler(), 5, 0)
    for a, b in zip(scenes, again):
        assert a == b
        ia, ib = np.asarray(render(a)), np.asarray(render(b))
        assert ia.shape == (64, 64, 3) and np.array_equal(ia, ib)


def test_training_split_excludes_held_out_and_reserved():
    scenes, _ = _scenes(SceneSampler(), 2000, 1)
    objects = [o for s in scenes for o in s.objects]
    pairs = {(o.color, o.shape) for o in objects}
    assert not pairs & spec.HELD_OUT_COMBOS
    assert {o.shape for o in objects} == set(spec.BASE_SHAPES) | {spec.GENERIC}
    assert {o.fill for o in objects} == set(spec.BASE_FILLS)
    assert all(o.size == "large" for o in objects if o.fill in spec.LARGE_ONLY_FILLS)
    shares = {k: sum(k(s) for s in scenes) / len(scenes) for k in
              (lambda s: len(s.objects) == 2, lambda s: s.count, lambda s: any(o.shape == spec.GENERIC for o in s.objects))}
    two, counted, generic = shares.values()
    assert 0.3 < two < 0.4 and 0.06 < counted < 0.12 and 0.25 < generic < 0.45, shares
    held, _ = _scenes(SceneSampler(split="held_out"), 200, 2)
    assert all((o.color, o.shape) in spec.HELD_OUT_COMBOS for s in held for o in s.objects)


def test_unnamed_silhouettes_are_varied_and_never_heart_like():
    """The reserved heart stays out of training unnamed too: no training silhouette reads as
    a heart (or any named shape), clean or degraded, and none is close to it in any pose."""
    from sdlab.world.render import render_object
    from sdlab.world.silhouettes import RESERVED_MAX_IOU, VARIANTS, silhouette
    from sdlab.world.templates import iou, poses, rasterize

    rng = random.Random(7)
    sils = [silhouette(rng.randrange(VARIANTS)) for _ in range(300)]
    assert len({s.family for s in sils}) == 4 and sum(bool(s.cuts) for s in sils) > 60
    for sil in sils:
        mask = rasterize(sil.rings, sil.cuts)
        assert max(iou(mask, pose) for pose in poses("heart")) <= RESERVED_MAX_IOU
    clean = [oracle.read(render_object(sil.rings, size, sil.cuts)).main for sil in sils for size in spec.SIZES]
    assert all(r.shape == spec.GENERIC for r in clean)
    degraded = [oracle.read(degrade(render_object(sil.rings, size, sil.cuts), rng)).main
                for sil in sils for size in spec.SIZES]
    assert sum(r is not None and r.shape == "heart" for r in degraded) <= 0.005 * len(degraded)
    assert sum(r is not None and r.shape == spec.GENERIC for r in degraded) / len(degraded) >= 0.95
    assert silhouette(12345) == silhouette(12345)


def test_counted_and_related_captions():
    rng = random.Random(3)
    counted = next(s for s in iter(lambda: SceneSampler(two_object_prob=1.0, count_prob=1.0, generic_prob=0.0).sample(rng), None))
    a = counted.objects[0]
    assert counted.objects[0].shape == counted.objects[1].shape and counted.objects[0].color == counted.objects[1].color
    assert full_caption(counted).startswith(f"a photo of two {a.color} {spec.plural(a.shape)}")
    related = SceneSampler(two_object_prob=1.0, count_prob=0.0, generic_prob=0.0).sample(rng)
    x, y = related.objects
    word = " to the left of " if related.relation == "left of" else " above "
    assert f"a {x.color} {x.shape}{word}a {y.color} {y.shape}".replace("a a", "an a") in full_caption(related)


def test_unnamed_objects_are_called_shape_or_object():
    rng = random.Random(4)
    scene = single_object_scene(spec.GENERIC, "red", "large", "left", "blue", rng, variant=99)
    assert full_caption(scene) == "a photo of a large red shape on the left on a blue background"
    texts = {caption(scene, rng) for _ in range(300)}
    assert any("object" in t for t in texts) and any("shape" in t for t in texts)
    assert not any(named in t.split() for t in texts for named in spec.SHAPES)
    sil_words = set(spec_words := [w for t in texts for w in t.replace("-", " ").split()])
    assert sil_words & {"spiky", "pointed", "sided", "round", "blobby", "irregular", "lumpy"}, spec_words[:20]


def test_captions_name_attributes():
    rng = random.Random(0)
    scene = single_object_scene("star", "red", "large", "left", "blue", rng)
    assert full_caption(scene) == "a photo of a large red star on the left on a blue background"
    texts = {caption(scene, rng) for _ in range(200)}
    assert len(texts) > 20                                   # templates vary
    assert any("red" not in t for t in texts)                # attributes sometimes left out
    assert all("star" in t for t in texts)                   # a named shape is always named


@pytest.mark.parametrize("degraded, floor", [(False, 0.99), (True, 0.95)])
def test_oracle_accuracy_per_attribute(degraded, floor):
    scenes, rng = _scenes(EVERYTHING, N, 3 + degraded)
    images = [degrade(render(s), rng) if degraded else render(s) for s in scenes]
    acc = accuracy(scenes, images)
    print(("degraded" if degraded else "clean"), {k: round(v, 4) for k, v in acc.items()})
    for attr in ("background", "count", "color", "shape", "size", "position", "fill"):
        assert acc[attr] >= floor, (attr, acc[attr])


@pytest.mark.parametrize("fill", ["outlined", "striped"])
def test_oracle_reads_patterned_fills_on_every_named_shape(fill):
    rng = random.Random(11)
    scenes = [single_object_scene(shape, rng.choice(["red", "white", "yellow"]), "large", rng.choice(list(spec.POSITIONS)),
                                  "blue", rng, fill=fill) for shape in spec.SHAPES for _ in range(6)]
    acc = accuracy(scenes, [render(s) for s in scenes])
    assert acc["fill"] >= 0.95 and acc["shape"] >= 0.95, acc


def test_oracle_reports_mask_and_bbox():
    rng = random.Random(5)
    scene = single_object_scene("square", "white", "large", "center", "black", rng)
    reading = oracle.read(render(scene))
    obj = reading.main
    cx, cy = scene.objects[0].center
    x0, y0, x1, y1 = obj.bbox
    assert abs((x0 + x1 - 1) / 2 - cx) <= 1 and abs((y0 + y1 - 1) / 2 - cy) <= 1
    assert abs((x1 - x0) - 34) <= 2 and abs(obj.area - 34 * 34) < 150
    d = reading.to_dict()
    rle = d["objects"][0]["mask_rle"]
    assert sum(rle["counts"]) == 64 * 64 and json.dumps(d)


def test_oracle_on_empty_image_finds_no_object():
    reading = oracle.read(np.full((64, 64, 3), 200, np.uint8))
    assert reading.objects == [] and reading.main is None


def test_export_folder_metadata_jsonl(tmp_path):
    from PIL import Image

    from sdlab.world.data import export_folder
    from sdlab.world.metrics import scene_checks
    from sdlab.world.scene import Scene, ShapeObject

    out = export_folder(tmp_path / "ds", 12, seed=4)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({r["file_name"] for r in rows}) == 12
    for row in rows:
        image = Image.open(out / row["file_name"])
        assert image.size == (64, 64) and row["text"]
        scene = Scene.from_dict(row["scene"])
        assert scene_checks(scene, oracle.read(image))["all"]
        for obj in scene.objects:
            assert obj.shape in row["text"] or (obj.shape == spec.GENERIC and
                                                any(n in row["text"] for n in spec.GENERIC_NOUNS))


def test_export_reserved_concept_and_refusals(tmp_path):
    from sdlab.cli.main import main
    from sdlab.world.data import concept_sampler, export_folder

    out = export_folder(tmp_path / "hearts", 8, sampler=concept_sampler("heart"))
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all("heart" in r["text"] for r in rows)
    from PIL import Image
    assert all(oracle.read(Image.open(out / r["file_name"])).main.shape == "heart" for r in rows)
    assert len({r["scene"]["objects"][0]["color"] for r in rows}) >= 3          # the colour varies
    striped = export_folder(tmp_path / "striped", 6, sampler=concept_sampler(fill="striped"))
    assert all(r["scene"]["objects"][0]["fill"] == "striped" for r in
               map(json.loads, (striped / "metadata.jsonl").read_text().splitlines()))
    before = (out / "metadata.jsonl").read_bytes()
    assert main(["world", "export", str(out), "--concept", "heart", "--n", "8"]) == 2   # never into a used folder
    assert (out / "metadata.jsonl").read_bytes() == before
    assert main(["world", "export", str(tmp_path / "x"), "--n", "0"]) == 2
    assert main(["world", "export", str(tmp_path / "y"), "--concept", "hart"]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
