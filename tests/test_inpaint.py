"""Inpainting and outpainting (sdlab.inpaint, sdlab.sampling.inpaint): the known region held to the
source in the loop, A1111's mask blur / crop / fill / composite, the 9-channel inpainting UNet
against diffusers, the CLI; and the oracle targets on the shipped model (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab import GenerationConfig, Pipeline
from sdlab.errors import ConfigError
from sdlab.inpaint import Expand, InpaintConfig, inpaint_latents, load_mask, prepare
from sdlab.inpaint import masks
from sdlab.io.metadata import parse_infotext, read_png_metadata
from sdlab.sampling import get_sampler
from sdlab.sampling.inpaint import KnownRegionDenoiser, latent_mask


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def _image(size=(16, 16), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _mask(size=(16, 16), box=(4, 4, 12, 12)) -> Image.Image:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im).astype(int)


# --- the loop: the known region -----------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "Heun"])
def test_known_region_is_the_source_noised_to_each_sigma(sampler):
    """Every model call sees the source noised to the current sigma outside the mask (with the run's
    noise), and the loop ends on the source's latents there; inside, the model's work is kept."""
    g = torch.Generator().manual_seed(0)
    source, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    keep = torch.ones(1, 1, 8, 8)
    keep[..., 2:6, 2:6] = 0
    seen = []

    def model(x, sigma, cond=None):
        seen.append((x.clone(), sigma.clone()))
        return 0.3 * x / (sigma.reshape(-1, 1, 1, 1) ** 2 + 1) + 0.1

    sigmas = torch.tensor([14.6, 5.0, 2.0, 0.8, 0.2, 0.0])
    wrapped = KnownRegionDenoiser(model, source, keep, noise)
    out = get_sampler(sampler).fn(wrapped, noise * sigmas[0], sigmas,
                                  generator=[torch.Generator().manual_seed(i) for i in range(2)])
    for x, sigma in seen:
        want = source + noise * sigma.reshape(-1, 1, 1, 1)
        torch.testing.assert_close(x * keep, want * keep)
    torch.testing.assert_close(out * keep, source * keep, atol=1e-5, rtol=0)
    assert (out - source)[..., 2:6, 2:6].abs().min() > 1e-3          # the masked region was repainted


def test_latent_mask_is_a1111s_rounded_bicubic_resize():
    m = _mask((16, 16), (4, 4, 12, 12))
    lat = latent_mask(m, 8, 8)
    assert lat.shape == (1, 1, 8, 8) and set(lat.unique().tolist()) == {0.0, 1.0}
    assert lat[0, 0, 2:6, 2:6].eq(1).all() and lat.sum() == 16


# --- the pixel side -------------------------------------------------------------------------------

def _cv2_blur(arr: np.ndarray, s: int) -> np.ndarray:
    """OpenCV's GaussianBlur as A1111 calls it, written out: kernel 2*int(2.5 s + 0.5) + 1 taps of
    exp(-d^2 / 2 s^2), normalised; BORDER_REFLECT_101; x then y, rounded to 8 bits each pass."""
    r = int(2.5 * s + 0.5)
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * s * s))
    k /= k.sum()
    out = arr.astype(np.float64)
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        out = sum(w * np.take(p, range(i, i + arr.shape[axis]), axis=axis) for i, w in enumerate(k))
        out = np.clip(np.rint(out), 0, 255)
    return out.astype(np.uint8)


@pytest.mark.parametrize("blur", [1, 4, 7])
def test_mask_blur_is_a1111s_opencv_blur(blur):
    m = _mask((40, 30), (5, 3, 22, 30))
    got = np.asarray(masks.blur_mask(m, blur))
    assert np.abs(got.astype(int) - _cv2_blur(np.asarray(m), blur)).max() <= 1
    assert masks.blur_mask(m, 0).tobytes() == m.tobytes()


@pytest.mark.parametrize("box, padding, size, fitted", [
    ((10, 10, 20, 14), 0, (64, 64), (10, 7, 20, 17)),        # wide box: grown in height about its centre
    ((10, 10, 20, 14), 4, (64, 64), (6, 3, 24, 21)),
    ((0, 50, 6, 64), 8, (64, 64), (0, 42, 22, 64)),          # at the corner: shifted back inside
    ((30, 0, 34, 40), 0, (64, 64), (12, 0, 52, 40)),         # tall box: grown in width
])
def test_crop_region_is_a1111s(box, padding, size, fitted):
    m = _mask(size, box)
    region = masks.fit_region(masks.crop_region(m, padding), 64, 64, size)
    assert region == fitted
    assert region[2] - region[0] == region[3] - region[1]


def test_masks_from_files_any_mode_and_size(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((255, 255, 255, 255), (2, 2, 6, 6))
    rgba.save(tmp_path / "alpha.png")
    assert _arr(load_mask(tmp_path / "alpha.png")).sum() == 16 * 255      # transparency: alpha is the mask
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "white.jpg")
    assert load_mask(tmp_path / "white.jpg").mode == "L"
    m = masks.prepare_mask(_mask((8, 8), (0, 0, 4, 8)), (16, 16))       # another size: resized to the image
    assert m.size == (16, 16) and _arr(m)[:, :6].min() > 200 and _arr(m)[:, 10:].max() < 50
    inv = masks.prepare_mask(_mask((8, 8), (0, 0, 4, 8)), (8, 8), invert=True)
    assert _arr(inv)[:, :4].max() == 0 and _arr(inv)[:, 4:].min() == 255
    with pytest.raises(ConfigError, match="all black: nothing to repaint"):
        masks.prepare_mask(Image.new("L", (8, 8), 0), (8, 8))
    with pytest.raises(ConfigError, match="inverted"):
        masks.prepare_mask(Image.new("L", (8, 8), 255), (8, 8), invert=True)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(Exception, match="cannot read mask"):
        load_mask(tmp_path / "bad.png")


def test_a_mask_of_another_shape_is_refused():
    """A mask at another scale of the image is resized (as A1111 does); one of another shape is a mistake."""
    assert masks.prepare_mask(_mask((32, 16), (0, 0, 8, 16)), (64, 32)).size == (64, 32)
    assert masks.prepare_mask(_mask((63, 64), (0, 0, 8, 16)), (64, 64)).size == (64, 64)     # rounding: fine
    with pytest.raises(ConfigError, match="the mask is 64x32 but the image 64x64"):
        masks.prepare_mask(_mask((64, 32), (0, 0, 8, 16)), (64, 64))


def test_fill_paints_the_mask_from_its_surroundings():
    image = Image.new("RGB", (32, 32), (0, 0, 200))
    image.paste((255, 0, 0), (8, 8, 24, 24))
    out = _arr(masks.fill(image, _mask((32, 32), (8, 8, 24, 24))))
    assert np.abs(out[16, 16] - [0, 0, 200]).max() <= 2                   # the red square is gone
    assert np.array_equal(out[:4], _arr(image)[:4])


def test_options_are_checked():
    with pytest.raises(ConfigError, match="masked_content must be one of fill, original, latent noise"):
        InpaintConfig(masked_content="noise")
    with pytest.raises(ConfigError, match="mask_blur must be between 0 and 64"):
        InpaintConfig(mask_blur=-1)
    with pytest.raises(ConfigError, match="only_masked must be true or false"):
        InpaintConfig(only_masked="yes")
    assert Expand.parse("left=16, top=8") == Expand(left=16, top=8)
    for bad, msg in [("left=16,left=8", "each once"), ("up=4", "SIDE=PIXELS"), ("left=-4", "SIDE=PIXELS"),
                     ("", "at least one side"), ("left=0", "at least one side"), ("right=99999", "between 0")]:
        with pytest.raises(ConfigError, match=msg):
            Expand.parse(bad)


# --- the pipeline -----------------------------------------------------------------------------------

def _unchanged_outside(result_image, source, overlay):
    outside = np.asarray(overlay) == 0
    assert outside.any()
    assert np.array_equal(_arr(result_image)[outside], _arr(source)[outside])


@pytest.mark.parametrize("content", ["original", "fill", "latent noise", "latent nothing"])
def test_pixels_outside_the_blurred_mask_are_the_source(pipe, content):
    image, mask = _image((24, 16)), _mask((24, 16), (4, 4, 12, 12))
    options = InpaintConfig(mask_blur=1, masked_content=content)
    cfg = GenerationConfig("a red circle", steps=4, seed=3, strength=1.0, batch_size=2)
    res = pipe.inpaint(cfg, image, mask, options)
    prep = prepare(image, mask, options, (24, 16))
    assert [im.size for im in res.images] == [(24, 16)] * 2 and res.seeds == [3, 4]
    for im in res.images:
        _unchanged_outside(im, image, prep.overlay)
        assert np.abs(_arr(im)[5:11, 5:11] - _arr(image)[5:11, 5:11]).mean() > 5      # inside: repainted
    params = parse_infotext(res.infotexts[0])[2]
    assert params["Mask blur"] == 1 and params["Denoising strength"] == 1.0
    assert params.get("Masked content") == (None if content == "original" else content)
    assert res.settings[0]["mode"] == "inpaint" and res.settings[0]["inpaint"]["masked_content"] == content


def test_a_hires_fix_is_refused_not_ignored(pipe):
    with pytest.raises(ConfigError, match="txt2img only"):
        pipe.inpaint(GenerationConfig("x", steps=2, hires_scale=2.0), _image(), _mask())


def test_masked_content_sets_the_start(pipe, monkeypatch):
    image, mask = _image(), _mask()
    seen = {}
    real = pipe.sample_latents

    def spy(config, seeds, width, height, **kw):
        seen.update(kw, size=(width, height))
        return real(config, seeds, width, height, **kw)

    monkeypatch.setattr(pipe, "sample_latents", spy)
    cfg = GenerationConfig("x", steps=2, seed=5)
    source = pipe.encode_image(torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1)
    repaint = latent_mask(mask, 8, 8)
    for content in ("latent nothing", "latent noise"):
        options = InpaintConfig(mask_blur=0, masked_content=content)
        inpaint_latents(pipe, cfg, prepare(image, mask, options, (16, 16)), options, [5])
        init, noise = seen["init"], seen["noise"]
        want = noise if content == "latent noise" else torch.zeros_like(init)
        assert torch.equal(init * repaint, want * repaint)
    options = InpaintConfig(mask_blur=0, masked_content="original")
    inpaint_latents(pipe, cfg, prepare(image, mask, options, (16, 16)), options, [5])
    torch.testing.assert_close(seen["init"], source)
    assert seen["size"] == (16, 16) and seen["denoiser"] is None and len(seen["guidance"]) == 1


def test_only_masked_inpaints_a_crop_at_the_native_size(pipe, monkeypatch):
    image, mask = _image((48, 40), seed=2), _mask((48, 40), (30, 28, 38, 36))
    sizes = []
    real = pipe.sample_latents
    monkeypatch.setattr(pipe, "sample_latents", lambda c, s, w, h, **kw: sizes.append((w, h)) or real(c, s, w, h, **kw))
    options = InpaintConfig(only_masked=True, padding=4, mask_blur=2)
    res = pipe.inpaint(GenerationConfig("x", steps=3, seed=1, strength=1.0), image, mask, options)
    prep = prepare(image, mask, options, (16, 16))
    assert sizes == [(16, 16)]
    # A1111's crop: the blurred mask's box (25, 23, 43, 40) grown by the padding 4, then to the
    # square of 16x16 about its centre and shifted back inside the image
    assert prep.region == (21, 14, 47, 40)
    assert res.images[0].size == (48, 40)
    _unchanged_outside(res.images[0], image, prep.overlay)
    assert "Inpaint area: Only masked" in res.infotexts[0] and "Masked area padding: 4" in res.infotexts[0]


def test_outpaint_keeps_the_original_area(pipe):
    image = _image((16, 16), seed=4)
    res = pipe.outpaint(GenerationConfig("a blue background", steps=3, seed=2), image, "left=8,bottom=8",
                        InpaintConfig(mask_blur=2))
    out = res.images[0]
    assert out.size == (24, 24) and res.settings[0]["mode"] == "outpaint"
    assert np.array_equal(_arr(out)[:16, 8:], _arr(image))
    canvas, mask = masks.expand_canvas(image, Expand(left=8, bottom=8))
    assert _arr(mask)[:16, 8:].max() == 0 and _arr(mask)[16:].min() == 255 and _arr(mask)[:, :8].min() == 255
    assert np.array_equal(_arr(canvas)[:16, 8:], _arr(image))


# --- a 9-channel inpainting UNet (SD-inpainting layout; the inpaint_model_dir fixture: conftest.py) -----

def _channels_seen(unet) -> tuple[list, object]:
    seen = []
    return seen, unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True)


@pytest.mark.parametrize("cfg_scale", [1.0, 6.0])
def test_inpainting_unet_matches_diffusers_inpaint_pipeline(inpaint_model_dir, monkeypatch, cfg_scale):
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    pipe = Pipeline.load(inpaint_model_dir)
    image, mask = _image(seed=6), _mask((16, 16), (2, 6, 10, 14))
    steps, seed, prompt = 6, 11, "a green square on a white background"
    config = GenerationConfig(prompt, steps=steps, cfg_scale=cfg_scale, sampler="Euler", seed=seed, strength=1.0)
    options = InpaintConfig(mask_blur=0, masked_content="original")      # diffusers encodes the image as it is
    prep = prepare(image, mask, options, (16, 16))
    seen, hook = _channels_seen(pipe.c.unet)
    ours = inpaint_latents(pipe, config, prep, options, [seed])
    hook.remove()
    assert seen and set(seen) == {9}

    # diffusers samples the VAE posterior where sdlab takes its mode; the same inputs: its mode
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    c = pipe.c
    ref = StableDiffusionInpaintPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                         scheduler=c.make_scheduler(), safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
    sched = c.make_scheduler()
    sched.set_timesteps(steps)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    source = pipe.encode_image(torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1)
    start = (source + noise * sched.sigmas[0]) / sched.init_noise_sigma      # sdlab starts img2img-style at strength 1
    want = ref(prompt, image=image, mask_image=mask, height=16, width=16, strength=1.0, num_inference_steps=steps,
               guidance_scale=cfg_scale, negative_prompt="", latents=start, output_type="latent").images
    scale = want.abs().max().item()
    assert torch.allclose(ours, want, atol=2e-3 * scale), (ours - want).abs().max()


def test_inpainting_unet_inpaints_and_generates(inpaint_model_dir):
    pipe = Pipeline.load(inpaint_model_dir)
    seen, hook = _channels_seen(pipe.c.unet)
    image, mask = _image(seed=7), _mask()
    res = pipe.inpaint(GenerationConfig("x", steps=3, seed=1), image, mask, InpaintConfig(mask_blur=1))
    _unchanged_outside(res.images[0], image, prepare(image, mask, InpaintConfig(mask_blur=1), (16, 16)).overlay)
    txt = pipe.generate(GenerationConfig("x", steps=2, seed=1))       # txt2img: the whole image to repaint
    hook.remove()
    assert set(seen) == {9} and txt.images[0].size == (16, 16)


# --- the CLI ----------------------------------------------------------------------------------------

def test_cli_inpaint_and_outpaint(tiny_model_dir, tmp_path, capsys):
    from sdlab.cli.main import main

    _image((16, 16), seed=8).save(tmp_path / "in.png")
    _mask().save(tmp_path / "mask.png")
    Image.new("L", (16, 16), 0).save(tmp_path / "black.png")
    Image.new("L", (16, 8), 255).save(tmp_path / "wide.png")
    common = ["--model", str(tiny_model_dir), "--steps", "2", "--seed", "4"]
    assert main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "a red star", *common,
                 "--mask-blur", "2", "--masked-content", "fill", "--inpaint-strength", "0.5", "--clip-skip", "2",
                 "--out", str(tmp_path / "out")]) == 0
    made = tmp_path / "out" / "00000-4.png"
    params = parse_infotext(read_png_metadata(made)["parameters"])[2]
    assert (params["Mask blur"], params["Masked content"], params["Denoising strength"]) == (2, "fill", 0.5)
    assert params["Clip skip"] == 2
    assert main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "a red star", *common,
                 "--out", str(tmp_path / "defaults")]) == 0          # no flags: the measured recipe
    params = parse_infotext(read_png_metadata(tmp_path / "defaults" / "00000-4.png")["parameters"])[2]
    assert (params["Mask blur"], params["Masked content"], params["Denoising strength"]) == (4, "fill", 1.0)
    assert main(["inpaint", str(tmp_path / "in.png"), "a red star", "--expand", "top=8", *common,
                 "--out", str(tmp_path / "wide")]) == 0
    assert Image.open(tmp_path / "wide" / "00000-4.png").size == (16, 24)
    capsys.readouterr()
    for argv, message in [
        ([str(tmp_path / "in.png"), str(tmp_path / "mask.png")], "give IMAGE MASK PROMPT"),
        ([str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "x", "--expand", "top=8"], "IMAGE PROMPT only"),
        ([str(tmp_path / "in.png"), "x", "--expand", "up=8"], "SIDE=PIXELS"),
        ([str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "x", "--masked-content", "noise"], "masked_content"),
        ([str(tmp_path / "in.png"), str(tmp_path / "nope.png"), "x"], "cannot read mask"),
        ([str(tmp_path / "in.png"), str(tmp_path / "black.png"), "x"], "all black: nothing to repaint"),
        ([str(tmp_path / "in.png"), str(tmp_path / "wide.png"), "x"], "the mask is 16x8 but the image 16x16"),
    ]:
        assert main(["inpaint", *argv, *common, "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# --- the oracle acceptance of benchmarks/inpaint_eval.py ---------------------------------------------

def test_eval_masks_edits_and_scores_on_rendered_scenes(monkeypatch):
    import random

    from bench_util import load_benchmark
    from sdlab.world.render import render

    ev = load_benchmark("inpaint_eval", monkeypatch)
    shapes = ("circle", "square", "triangle", "star", "cross")
    rng = random.Random(0)
    for i, scene in enumerate(ev.two_object_scenes(6, shapes)):
        index = i % 2
        mask = np.asarray(ev.object_mask(scene, index, 3)) > 0
        obj, other = scene.objects[index], scene.objects[1 - index]
        assert mask[obj.center[1], obj.center[0]] and not mask[other.center[1], other.center[0]]
        for kind in ("shape", "color"):
            target = ev.edited(scene, index, kind, shapes, rng)
            new = target.objects[index]
            assert target.objects[1 - index] == other and (getattr(new, kind) != getattr(obj, kind))
            assert [getattr(new, a) for a in ev.ATTRS if a != kind] == [getattr(obj, a) for a in ev.ATTRS if a != kind]
            assert ev.score_inpaint(scene, index, target, render(target)) == {"new_right": True, "other_same": True}
            assert ev.score_inpaint(scene, index, target, render(scene)) == {"new_right": False, "other_same": True}
            wrong = ev.edited(target, 1 - index, "color", shapes, rng)             # the other object changed
            assert not ev.score_inpaint(scene, index, target, render(wrong))["other_same"]
    assert ev.psnr(np.zeros(4), np.zeros(4)) == float("inf") and round(ev.psnr(np.zeros(4), np.ones(4)), 1) == 48.1


def test_eval_runs_and_writes_its_one_result(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import json
    import sys

    from bench_util import load_benchmark

    ev = load_benchmark("inpaint_eval", monkeypatch)
    monkeypatch.setattr(sys.modules["report"], "RESULTS_DIR", tmp_path)
    assert ev.main(["--model", str(tiny_model_dir), "--n", "2", "--steps", "1", "--results"]) == 0
    report = json.loads((tmp_path / "inpaint_eval.json").read_text())
    assert report["inpaint"]["n"] == 2 and report["outpaint"]["n"] == 2
    assert report["inpaint"]["composite_exact_outside"] == 1.0 and report["outpaint"]["original_exact"] == 1.0
    assert "| inpaint: new object right (n=2) |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ev.main(["--shapes", "circle,blob"])
    assert "--shapes takes at least two of" in capsys.readouterr().err


# The targets (issue 21), not to be loosened. On the shipped v2 model (n=16) the benchmark
# measured new object right 0.75, other object the same 1.00, PSNR median 43.8 dB: this test fails
# on v2 for the first and is meant for v3. v2 cannot draw the new world's shapes, so the scenes use
# its five; re-calibrate ACCEPTANCE_SHAPES (to spec.BASE_SHAPES) on v3, never the targets.
NEW_RIGHT_TARGET, OTHER_SAME_TARGET, PSNR_TARGET_DB = 0.80, 0.95, 40.0
CONSISTENT_OUTPAINT = 0.90        # sdlab's reading of "a consistent background": the scene reads as before
ACCEPTANCE_SHAPES = ("circle", "square", "triangle", "star", "cross")


@pytest.mark.slow
def test_oracle_acceptance_on_the_shipped_model(monkeypatch):
    from bench_util import load_benchmark

    ev = load_benchmark("inpaint_eval", monkeypatch)
    report = ev.evaluate(Pipeline.load(), n=32, shapes=ACCEPTANCE_SHAPES)
    ip, op = report["inpaint"], report["outpaint"]
    assert ip["new_right"] >= NEW_RIGHT_TARGET, ip
    assert ip["other_same"] >= OTHER_SAME_TARGET, ip
    assert ip["psnr_outside_db"] >= PSNR_TARGET_DB and ip["composite_exact_outside"] == 1.0, ip
    assert op["original_exact"] == 1.0 and op["consistent"] >= CONSISTENT_OUTPAINT, op
