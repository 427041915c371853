"""Hires fix (sdlab.sampling.hires): base pass, upscale, a second img2img pass at the new size
through the same loop, A1111's step count, infotext and API fields; tiled decode for large images."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench_util import load_benchmark
from sdlab import GenerationConfig, Pipeline
from sdlab.errors import ConfigError
from sdlab.io.metadata import parse_infotext
from sdlab.sampling import get_sigmas
from sdlab.sampling.hires import TILE_FACTOR, hires_sigmas, tiled_vae, upscaler_named
from test_server_browser import _open_studio, browser, server  # noqa: F401  (the studio's fixtures)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def _base(pipe, config):
    return pipe.sample_latents(config, [config.seed], *pipe.size(config))


def test_second_pass_size_steps_and_infotext(pipe):
    events = []
    config = GenerationConfig("a red circle", seed=1, steps=4, hires_scale=2, hires_strength=0.5, hires_steps=3)
    result = pipe.generate(config, callback=events.append)
    side = pipe.native_size
    assert result.images[0].size == (2 * side, 2 * side)
    assert [e.total for e in events] == [4] * 4 + [3] * 3          # exactly hires_steps, as A1111
    _, _, params = parse_infotext(result.infotexts[0])
    assert params["Size"] == f"{side}x{side}"                     # A1111 writes the first pass's size
    assert (params["Hires upscale"], params["Hires steps"], params["Hires upscaler"]) == (2.0, 3, "Latent")
    assert params["Denoising strength"] == 0.5
    s = result.settings[0]
    assert (s["hires_scale"], s["hires_strength"], s["hires_upscaler"], s["hires_steps"]) == (2, 0.5, "latent", 3)
    plain = pipe.generate(GenerationConfig("a red circle", seed=1, steps=4))
    assert "Hires upscale" not in plain.infotexts[0] and "hires_scale" not in plain.settings[0]


def test_hires_sigmas_are_a1111s_tail(pipe):
    """A1111 (sd_samplers_common.setup_img2img_steps with steps given): int(steps / strength) steps of
    sigmas, of which the last `steps` run; hires_steps 0 means the first pass's steps."""
    config = GenerationConfig("x", steps=10, hires_scale=2, hires_strength=0.5)
    torch.testing.assert_close(hires_sigmas(pipe, config), get_sigmas(pipe.schedule, 20, "default")[10:])
    config = GenerationConfig("x", steps=10, hires_scale=2, hires_strength=0.7, hires_steps=7)
    torch.testing.assert_close(hires_sigmas(pipe, config), get_sigmas(pipe.schedule, 10, "default")[3:])


def test_hires_sampler_runs_the_second_pass(pipe):
    """hires_sampler (A1111's Hires sampling method): the first pass with `sampler`, the second with it,
    on its own schedule's tail; written as "Hires sampler" only when it differs from the sampler."""
    from dataclasses import replace

    from sdlab.sampling.hires import hires_pass

    config = GenerationConfig("a red circle", seed=4, steps=4, sampler="Euler a", hires_scale=2, hires_strength=0.5,
                              hires_sampler="Euler")
    result = pipe.generate(config)
    side = pipe.native_size
    euler = replace(config, sampler="Euler", hires_sampler=None)
    second = hires_pass(pipe, euler, [4], _base(pipe, config), side, side)
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(pipe.decode_images(second)[0]))
    assert parse_infotext(result.infotexts[0])[2]["Hires sampler"] == "Euler"
    assert result.settings[0]["hires_sampler"] == "Euler"
    same = pipe.generate(replace(config, sampler="Euler"))
    plain = pipe.generate(replace(config, sampler="Euler", hires_sampler=None))
    assert np.array_equal(np.asarray(same.images[0]), np.asarray(plain.images[0]))
    assert "Hires sampler" not in same.infotexts[0]
    karras = replace(config, steps=10, sampler="Euler", hires_sampler="Euler Karras")
    torch.testing.assert_close(hires_sigmas(pipe, karras), get_sigmas(pipe.schedule, 20, "karras")[10:])
    with pytest.raises(ConfigError, match="hires_sampler: unknown sampler 'Euler z'; known samplers: Euler,"):
        GenerationConfig("x", hires_sampler="Euler z")


@pytest.mark.parametrize("upscaler,mode", [("latent", "bilinear"), ("latent-nearest-exact", "nearest-exact")])
def test_latent_upscale_is_a1111s_interpolation(pipe, upscaler, mode):
    """At strength 0 the second pass is the upscaled latents themselves: torch interpolate, no antialias."""
    config = GenerationConfig("a red circle", seed=2, steps=3, hires_scale=2, hires_strength=0.0,
                              hires_upscaler=upscaler)
    got = pipe.generate(config).images[0]
    base = _base(pipe, config)
    want = pipe.decode_images(F.interpolate(base, scale_factor=2, mode=mode))[0]
    assert np.array_equal(np.asarray(got), np.asarray(want))


def test_lanczos_decodes_resizes_and_encodes(pipe):
    from PIL import Image

    config = GenerationConfig("a red circle", seed=2, steps=3, hires_scale=1.5, hires_strength=0.0,
                              hires_upscaler="lanczos")
    got = pipe.generate(config).images[0]
    side = int(pipe.native_size * 1.5) // 8 * 8
    image = pipe.decode_images(_base(pipe, config))[0].resize((side, side), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)[None] / 127.5 - 1
    want = pipe.decode_images(pipe.encode_image(pixels))[0]
    assert got.size == (side, side) and np.array_equal(np.asarray(got), np.asarray(want))


def test_refusals_before_sampling(pipe):
    from PIL import Image

    events = []
    with pytest.raises(ConfigError, match="txt2img only"):
        pipe.generate(GenerationConfig("x", steps=2, hires_scale=2), init_image=Image.new("RGB", (16, 16)),
                      callback=events.append)
    with pytest.raises(ConfigError, match="past the largest side 4096"):
        pipe.generate(GenerationConfig("x", steps=2, hires_scale=4, width=2048, height=64), callback=events.append)
    assert events == []
    with pytest.raises(ConfigError, match="hires_upscaler must be one of latent, "):
        GenerationConfig("x", hires_upscaler="ESRGAN")
    with pytest.raises(ConfigError, match="hires_scale must be between 1.0 and 4.0"):
        GenerationConfig("x", hires_scale=0.5)
    assert upscaler_named("Latent (nearest-exact)") == "latent-nearest-exact" and upscaler_named("lanczos") == "lanczos"


def test_large_results_decode_tiled(pipe, monkeypatch):
    vae = pipe.c.vae
    calls = []
    original = type(vae).tiled_decode
    monkeypatch.setattr(type(vae), "tiled_decode", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    config = GenerationConfig("a red circle", seed=3, steps=2, hires_scale=3, hires_strength=0.3)
    assert 3 * pipe.native_size > TILE_FACTOR * pipe.native_size
    image = pipe.generate(config).images[0]
    assert calls and image.size == (48, 48) and not vae.use_tiling       # tiling is switched off again


def test_tiled_decode_is_close_to_one_decode_on_the_shipped_model():
    """diffusers' tiling works on the shipped VAE: a 256x256 image (4x native) from a real first pass's
    latents, decoded in blended 64x64 tiles, is within 0.03 mean (of the [-1, 1] range) of one decode
    (0.012 measured)."""
    shipped = Pipeline.load()
    config = GenerationConfig("a large red circle on a blue background", seed=1, steps=6)
    big = F.interpolate(_base(shipped, config), scale_factor=4, mode="bilinear")
    with tiled_vae(shipped.c.vae):
        tiled = shipped.decode(big)
    assert (tiled - shipped.decode(big)).abs().mean() < 0.03


def test_cli_flags(tiny_model_dir, tmp_path):
    from sdlab.cli.main import main
    from sdlab.io.metadata import read_png_metadata

    assert main(["generate", "a red circle", "--model", str(tiny_model_dir), "--steps", "2", "--seed", "1",
                 "--hires-scale", "2", "--hires-strength", "0.5", "--hires-upscaler", "lanczos",
                 "--hires-sampler", "Euler", "--out", str(tmp_path)]) == 0
    (png,) = tmp_path.glob("*.png")
    meta = read_png_metadata(png)
    assert meta["params"]["Hires upscaler"] == "Lanczos" and meta["settings"]["hires_upscaler"] == "lanczos"
    assert meta["params"]["Hires sampler"] == "Euler" and meta["settings"]["hires_sampler"] == "Euler"


def test_http_schema_declares_the_fields():
    from sdlab.server.schemas import GenerateRequest

    r = GenerateRequest(prompt="x", hires_scale=2, hires_upscaler="lanczos", clip_skip=2)
    assert (r.hires_strength, r.hires_steps, r.clip_skip) == (0.7, 0, 2)
    with pytest.raises(ValueError, match="hires_steps"):
        GenerateRequest(prompt="x", hires_steps=151)
    assert GenerateRequest(prompt="x", hires_sampler="DPM++ 2M Karras").hires_sampler == "DPM++ 2M Karras"
    with pytest.raises(ValueError, match="hires_sampler"):
        GenerateRequest(prompt="x", hires_sampler="Euler z")


def test_a1111_api_hires_fix_and_clip_skip(tmp_path):
    """webuiapi's txt2img with enable_hr and override_settings CLIP_stop_at_last_layers gives the
    Python API's image; a hires size past the server's --max-side fails the job in one line."""
    webuiapi = pytest.importorskip("webuiapi")
    import requests
    from test_a1111_api import serving

    shipped = Pipeline.load()
    prompt = "a large red circle on a blue background"
    with serving(shipped, tmp_path / "out", max_side=96) as (base, _):
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(base.rsplit(":", 1)[1]))
        r = api.txt2img(prompt=prompt, seed=3, steps=4, sampler_name="Euler", width=48, height=48, enable_hr=True,
                        hr_scale=2, hr_upscaler="Latent (nearest-exact)", denoising_strength=0.5,
                        hr_second_pass_steps=3, override_settings={"CLIP_stop_at_last_layers": 2})
        want = shipped.generate(GenerationConfig(prompt, seed=3, steps=4, sampler="Euler", cfg_scale=7.0, width=48,
                                                 height=48, hires_scale=2, hires_strength=0.5, clip_skip=2,
                                                 hires_upscaler="latent-nearest-exact", hires_steps=3))
        assert r.image.size == (96, 96) and np.array_equal(np.asarray(r.image), np.asarray(want.images[0]))
        assert (r.info["clip_skip"], r.info["denoising_strength"]) == (2, 0.5)
        params = parse_infotext(r.info["infotexts"][0])[2]
        assert (params["Clip skip"], params["Hires upscaler"], params["Hires steps"]) == (2, "Latent (nearest-exact)", 3)
        r = api.txt2img(prompt=prompt, seed=3, steps=4, sampler_name="Euler a", width=48, height=48, enable_hr=True,
                        hr_scale=2, denoising_strength=0.5, hr_sampler_name="Euler")
        want = shipped.generate(GenerationConfig(prompt, seed=3, steps=4, sampler="Euler a", cfg_scale=7.0, width=48,
                                                 height=48, hires_scale=2, hires_strength=0.5, hires_sampler="Euler"))
        assert np.array_equal(np.asarray(r.image), np.asarray(want.images[0]))
        assert parse_infotext(r.info["infotexts"][0])[2]["Hires sampler"] == "Euler"
        too_big = requests.post(f"{base}/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64,
                                                                   "height": 64, "enable_hr": True}, timeout=60)
        assert too_big.status_code == 500 and "past this server's largest side 96" in too_big.text


def test_studio_hires_section_in_chromium(browser, server):
    """The studio's txt2img tab: CLIP skip and the collapsible Hires fix section (Deep Shrink too) reach
    the job."""
    base, _ = server
    page, errors = _open_studio(browser, base)
    assert not page.is_visible("#hires_scale")            # collapsed
    page.click("#hires-fields summary")
    page.fill("#prompt", "a large [red:blue:0.5] circle on a white background")
    page.fill("#steps", "4")
    page.fill("#seed", "5")
    page.fill("#clip_skip", "2")
    page.fill("#hires_scale", "2")
    page.fill("#hires_steps", "2")
    page.select_option("#hires_upscaler", "lanczos")
    page.fill("#deep_shrink", "2")
    page.select_option("#hires_sampler", "Euler")
    page.click("#generate")
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].some(i => i.naturalWidth === 128)",
                           timeout=180_000)
    meta = page.text_content("#meta")
    assert meta.startswith("a large [red:blue:0.5] circle")
    for field in ("Size: 64x64", "Clip skip: 2", "Hires upscale: 2", "Hires steps: 2", "Hires upscaler: Lanczos",
                  "Denoising strength: 0.7", "Deep Shrink: 2", "Hires sampler: Euler"):
        assert field in meta, (field, meta)
    page.click("#tab-img2img")
    assert page.is_hidden("#hires-fields") and page.is_visible("#clip_skip")
    assert errors == []
    page.close()


# issue 21's target: a 128x128 hires result, downscaled, reads within this of the 64x64 base
# (oracle all-right). Sample count and steps are the calibration knobs, not the target.
HIRES_TARGET = 0.05
HIRES_EVAL = ["--n", "128", "--steps", "20", "--upscalers", "lanczos", "--strengths", "0.5", "--deep-shrink", "2",
              "--hires-sampler", "Euler"]     # the README's command


@pytest.mark.slow
def test_hires_reads_as_well_as_the_base_on_the_shipped_model(monkeypatch, tmp_path):
    """The README's hires command (Deep Shrink 2, Lanczos, strength 0.5, an Euler second pass after the
    default Euler a) on the shipped model, as docs/hires_and_prompts.md measures it on 128 prompts."""
    bench = load_benchmark("hires_eval", monkeypatch)
    assert bench.TARGET == HIRES_TARGET
    out = tmp_path / "report.json"
    assert bench.main([*HIRES_EVAL, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    base = rows.pop("base 64x64")["all"]
    for name, row in rows.items():
        assert row["all"] >= base - HIRES_TARGET, (name, row["all"], base)


def test_hires_eval_table_marks_the_target(monkeypatch):
    bench = load_benchmark("hires_eval", monkeypatch)
    report = {"rows": {"base 64x64": {"all": 0.5, "delta_all": 0.0, "within_target": True, "seconds_per_image": 1.0},
                       "hires x2 latent 0.5": {"all": 0.4, "delta_all": -0.1, "within_target": False,
                                               "seconds_per_image": 3.0}}}
    lines = bench.table(report).splitlines()
    assert lines[2].startswith("| base 64x64 | 0.500 | +0.000") and lines[3].endswith("| **no** |")
