"""Trajectory recording and export on a tiny random model."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab import GenerationConfig
from sdlab.errors import ConfigError
from sdlab.io import animation
from sdlab.io.trajectory import TrajectoryRecorder
from sdlab.pipeline import Pipeline, _to_pil


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


@pytest.fixture(scope="module")
def recorded(pipe):
    config = GenerationConfig("a large red circle", steps=6, seed=3, batch_size=2, cfg_scale=3.0)
    rec = TrajectoryRecorder(pipe)
    w, h = pipe._size(config)
    latents = pipe.sample_latents(config, [3, 4], w, h, callback=rec)
    return rec, latents


def test_recorder_gets_one_frame_per_step(recorded):
    rec, latents = recorded
    xt, x0, sigmas, steps = rec.latents()
    assert xt.shape == x0.shape == (6, 2, *latents.shape[1:])
    assert steps == list(range(6))
    assert sigmas[-1] == 0.0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
    # the display scaling: x_t / sqrt(1 + sigma^2) with the sigma x_t sits at
    assert torch.allclose(xt[0] * math.sqrt(1 + sigmas[0] ** 2), rec.runs[0][0][2], atol=1e-5)


def test_last_x0_frame_is_the_final_image(recorded, pipe):
    rec, latents = recorded
    traj = rec.decode()
    final = _to_pil(pipe.decode(latents))
    for got, want in zip(traj.x0[-1], final):
        diff = np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16))
        assert diff.max() <= 1
    assert len(traj.xt) == 6 and len(traj.xt[0]) == 2 and traj.steps == list(range(6))


def test_gif_has_one_frame_per_step_and_png_strip(recorded, pipe, tmp_path):
    rec, _ = recorded
    side = pipe.native_size
    gif = rec.save(tmp_path / "t.gif", scale=4)
    with Image.open(gif) as im:
        assert im.n_frames == 6
        # columns x_t and x0 at scale 4, two images stacked, plus a label row
        assert im.size[0] == 2 * 4 * side and 2 * 4 * side < im.size[1] < 2 * 4 * side + 30
    strip = rec.save(tmp_path / "t.png", scale=2, max_columns=4)
    with Image.open(strip) as im:
        # 4 step columns plus the row-label margin; 4 rows (x_t, x0 per image) plus the header
        assert 4 * 2 * side < im.size[0] < 4 * 2 * side + 60 and 4 * 2 * side < im.size[1] < 4 * 2 * side + 30


def test_every_keeps_the_last_step(pipe):
    config = GenerationConfig("a circle", steps=5, seed=0, cfg_scale=1.0)
    rec = TrajectoryRecorder(pipe, every=2)
    pipe.generate(config, callback=rec)
    assert rec.latents()[3] == [0, 2, 4]


def test_batch_count_stacks_rows(pipe):
    config = GenerationConfig("a square", steps=3, seed=0, batch_count=2, cfg_scale=1.0)
    rec = TrajectoryRecorder(pipe)
    pipe.generate(config, callback=rec)
    assert len(rec.runs) == 2 and rec.latents()[0].shape[:2] == (3, 2)


def test_mp4_or_clear_error(recorded, tmp_path, monkeypatch):
    rec, _ = recorded
    monkeypatch.setattr(animation, "video_available", lambda: False)
    with pytest.raises(ConfigError, match="imageio-ffmpeg"):
        rec.save(tmp_path / "t.mp4")
    assert not (tmp_path / "t.mp4").exists()


def test_mp4_frames(recorded, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    import imageio.v3 as iio

    rec, _ = recorded
    path = rec.save(tmp_path / "t.mp4", scale=2)
    frames = iio.imread(path, plugin="FFMPEG", index=None)
    assert frames.shape[0] == 6 and frames.shape[1] % 16 == 0 and frames.shape[2] % 16 == 0


def test_bad_inputs(pipe, tmp_path):
    with pytest.raises(ConfigError, match="every"):
        TrajectoryRecorder(pipe, every=0)
    rec = TrajectoryRecorder(pipe)
    with pytest.raises(ConfigError, match="no sampling steps"):
        rec.save(tmp_path / "t.gif")
    with pytest.raises(ConfigError, match=r"\.gif, \.mp4, \.png"):
        rec.save(tmp_path / "t.jpg")


def test_cli_trajectory(capsys, tiny_model_dir, tmp_path, monkeypatch):
    from sdlab.cli.main import main

    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "3", "--seed", "1",
                 "--batch-size", "2", "--out", str(tmp_path), "--trajectory", str(tmp_path / "t.gif")])
    out = capsys.readouterr().out.split()
    assert code == 0 and out[-1].endswith("t.gif")
    with Image.open(out[-1]) as im:
        assert im.n_frames == 3
    monkeypatch.setattr(animation, "video_available", lambda: False)
    code = main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "2",
                 "--out", str(tmp_path / "b"), "--trajectory", str(tmp_path / "t.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "sdlab[video]" in err and not (tmp_path / "b").exists()
