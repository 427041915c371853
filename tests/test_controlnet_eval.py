"""benchmarks/controlnet_eval.py's scoring: the oracle's reading of an image against the scene of
the control, and the prompts that name only colour and background."""

from dataclasses import replace

import pytest

from bench_util import load_benchmark
from sdlab.world import spec
from sdlab.world.render import render
from sdlab.world.scene import Scene


@pytest.fixture
def bench(monkeypatch):
    return load_benchmark("controlnet_eval", monkeypatch)


def test_a_render_of_the_scene_follows_and_another_place_or_size_does_not(bench):
    scene = bench.scenes(1, ("square", "triangle"), seed=3)[0]
    row = bench.check(scene, render(scene))
    assert row["follows"] and row["color"] and row["background"] and row["iou"] == 1.0
    obj = scene.objects[0]
    moved = replace(obj, position="right" if obj.position != "right" else "left",
                    center=spec.POSITIONS["right" if obj.position != "right" else "left"])
    resized = replace(obj, size="small" if obj.size == "large" else "large")
    for other in (moved, resized):
        row = bench.check(scene, render(Scene(scene.background, (other,))))
        assert not row["follows"] and row["iou"] < 0.9


def test_scenes_vary_and_prompts_name_only_colour_and_background(bench):
    scenes = bench.scenes(40, spec.BASE_SHAPES)
    for attr in ("shape", "position", "size", "color"):
        assert len({getattr(s.objects[0], attr) for s in scenes}) > 1
    assert all(s.objects[0].color != s.background for s in scenes)
    prompt = bench.prompt_of(scenes[0])
    assert prompt == f"{'an' if scenes[0].objects[0].color[0] in 'aeiou' else 'a'} {scenes[0].objects[0].color} " \
                     f"object on {'an' if scenes[0].background[0] in 'aeiou' else 'a'} {scenes[0].background} background"
    assert not any(word in prompt for word in spec.SHAPES + tuple(spec.POSITIONS) + tuple(spec.SIZES))
