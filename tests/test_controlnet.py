"""ControlNet in the sampling loop (sdlab.control) on the tiny random model: diffusers'
StableDiffusionControlNetPipeline as the reference, weight 0, start / end, several controls, errors."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab import GenerationConfig, Pipeline
from sdlab.control import Control
from sdlab.control.unet import ControlledUNet
from sdlab.errors import ConfigError, ModelLoadError
from sdlab.control.loading import controlnet_from_unet

EPS_LEADING = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                   prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.load(tiny_model_dir)


def _controlnet(pipe, seed):
    """A ControlNet of the tiny UNet with random (non-zero) weights everywhere, zero convs included."""

    torch.manual_seed(seed)
    net = controlnet_from_unet(pipe.c.unet, conditioning_embedding_out_channels=(8, 8))  # /2 as the VAE
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def nets(pipe):
    return _controlnet(pipe, 1), _controlnet(pipe, 2)


def _image(seed, size=16):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _reference(pipe, nets, images, scheduler, config, noise, **kw):
    from diffusers import StableDiffusionControlNetPipeline

    ref = StableDiffusionControlNetPipeline(vae=pipe.c.vae, text_encoder=pipe.c.text_encoder,
                                            tokenizer=pipe.c.tokenizer, unet=pipe.c.unet, scheduler=scheduler,
                                            controlnet=list(nets) if len(nets) > 1 else nets[0],
                                            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return ref(config.prompt, images if len(images) > 1 else images[0], num_inference_steps=config.steps,
               guidance_scale=config.cfg_scale, latents=noise, negative_prompt="", output_type="latent",
               height=16, width=16, **kw).images


def _close(ours, ref):
    scale = ref.abs().max().item()
    assert torch.allclose(ours, ref, atol=2e-3 * scale), (ours - ref).abs().max()


@pytest.mark.parametrize("cfg_scale,guess", [(7.5, False), (7.5, True), (1.0, False)])
def test_euler_matches_diffusers_controlnet_pipeline(pipe, nets, cfg_scale, guess):
    config = GenerationConfig("a large green square", steps=6, cfg_scale=cfg_scale, sampler="Euler", seed=3)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    controls = [Control(_image(0), nets[0], scale=0.8, start=0.2, end=0.9, guess_mode=guess)]
    with pipe.using_controls(controls):
        ours = pipe.sample_latents(config, [3], 16, 16)
    ref = _reference(pipe, nets[:1], [_image(0)], pipe.c.make_scheduler(), config, noise * 0 + noise,
                     controlnet_conditioning_scale=0.8, control_guidance_start=0.2, control_guidance_end=0.9,
                     guess_mode=guess)
    with pipe.using_controls([dataclasses.replace(controls[0], scale=0.0)]):
        plain = pipe.sample_latents(config, [3], 16, 16)
    assert (ours - plain).abs().max() > 1e-2 * plain.abs().max()     # the control did change the result
    _close(ours, ref)


def test_ddim_two_controls_match_diffusers_multi_controlnet(pipe, nets):
    """DDIM (SD 1.x epsilon schedule), two ControlNets whose residuals add."""
    from diffusers import DDIMScheduler

    eps = Pipeline(dataclasses.replace(pipe.c, scheduler_config=dict(EPS_LEADING, _class_name="DDIMScheduler")))
    config = GenerationConfig("a small red circle", steps=5, cfg_scale=5.0, sampler="DDIM", seed=4)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    controls = [Control(_image(1), nets[0], scale=0.7), Control(_image(2), nets[1], scale=1.2, end=0.6)]
    from sdlab.sampling import get_sigmas, resolve_sampler

    s0 = float(get_sigmas(eps.schedule, 5, resolve_sampler("DDIM", "Automatic")[1])[0])
    with eps.using_controls(controls):       # diffusers' DDIM starts from unit noise in VP space
        ours = eps.sample_latents(config, [4], 16, 16, noise=noise * (s0**2 + 1) ** 0.5 / s0)
    sched = DDIMScheduler(**EPS_LEADING, clip_sample=False, set_alpha_to_one=True)
    ref = _reference(pipe, nets, [_image(1), _image(2)], sched, config, noise,
                     controlnet_conditioning_scale=[0.7, 1.2], control_guidance_start=[0.0, 0.0],
                     control_guidance_end=[1.0, 0.6])
    _close(ours, ref)


def test_weight_zero_is_no_control_bit_for_bit(pipe, nets):
    config = GenerationConfig("a blue star", steps=4, seed=7, sampler="Euler a")
    plain = pipe.generate(config).images[0]
    zero = pipe.generate(config, controls=[Control(_image(3), nets[0], scale=0.0)]).images[0]
    some = pipe.generate(config, controls=[Control(_image(3), nets[0], scale=1.0)]).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(zero))
    assert not np.array_equal(np.asarray(plain), np.asarray(some))


@pytest.mark.parametrize("start,end,on", [(0.0, 1.0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), (0.2, 0.7, [2, 3, 4, 5, 6]),
                                          (0.0, 0.5, [0, 1, 2, 3, 4]), (0.55, 1.0, [6, 7, 8, 9])])
def test_start_and_end_switch_the_residuals_on_the_right_steps(pipe, nets, start, end, on):
    config = GenerationConfig("a cyan square", steps=10, seed=1, sampler="Euler")
    seen = []
    scales = ControlledUNet.scales

    def spy(self):
        out = scales(self)
        seen.append((self.step, out[0]))
        return out

    ControlledUNet.scales = spy
    try:
        pipe.generate(config, controls=[Control(_image(4), nets[0], scale=0.5, start=start, end=end)])
    finally:
        ControlledUNet.scales = scales
    assert [step for step, s in seen if s == 0.5] == on
    assert [step for step, s in seen if s == 0.0] == sorted(set(range(10)) - set(on))


def test_infotext_and_settings_as_a1111_controlnet(pipe, nets):
    res = pipe.generate(GenerationConfig("a red circle", steps=2, seed=1),
                        controls=[Control(_image(5), nets[0], scale=0.6, start=0.1, end=0.8, module="edges")])
    assert ('ControlNet 0: "Module: edges, Model: ControlNetModel, Weight: 0.6, Resize Mode: Just Resize, '
            'Guidance Start: 0.1, Guidance End: 0.8, Control Mode: Balanced"') in res.infotexts[0]
    assert res.settings[0]["controls"][0]["weight"] == 0.6
    assert "ControlNet" not in pipe.generate(GenerationConfig("a red circle", steps=2, seed=1)).infotexts[0]


def test_folder_and_single_file_load_the_same_controlnet(pipe, nets, tmp_path):
    from safetensors.torch import save_file

    nets[0].save_pretrained(tmp_path / "cn")
    save_file({k: v.contiguous() for k, v in nets[0].state_dict().items()}, tmp_path / "cn.safetensors")
    config = GenerationConfig("a red circle", steps=3, seed=2, sampler="Euler")
    images = [pipe.generate(config, controls=[Control(_image(6), m)]).images[0]
              for m in (nets[0], tmp_path / "cn", str(tmp_path / "cn.safetensors"))]
    assert all(np.array_equal(np.asarray(images[0]), np.asarray(im)) for im in images[1:])
    res = pipe.generate(config, controls=[Control(_image(6), tmp_path / "cn.safetensors")])
    assert "Model: cn [" in res.infotexts[0]


def test_bad_controls_give_one_line_errors(pipe, nets, tmp_path):
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    (tmp_path / "cn.txt").write_text("x")
    cases = [
        (lambda: Control(_image(0), nets[0], module="depth"), ConfigError, "unknown control type 'depth'"),
        (lambda: Control(_image(0), nets[0], scale=3), ConfigError, "control scale must be"),
        (lambda: Control(_image(0), nets[0], start=0.5, end=0.5), ConfigError, "must be below its end"),
        (lambda: Control("img.png", nets[0]), ConfigError, "must be a PIL image"),
        (lambda: pipe.load_controlnet(tmp_path / "lora.safetensors"), ModelLoadError, "is no ControlNet file"),
        (lambda: pipe.load_controlnet(tmp_path / "cn.txt"), ModelLoadError, "unknown file type"),
        (lambda: pipe.load_controlnet(tmp_path / "missing"), ModelLoadError, "does not exist"),
        (lambda: pipe.load_controlnet(pipe.c.source / "unet"), ModelLoadError, "not a ControlNetModel"),
    ]
    for make, kind, text in cases:
        with pytest.raises(kind) as err:
            make()
        assert text in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_controlnet_of_another_scale_is_refused(pipe):

    sd_like = controlnet_from_unet(pipe.c.unet)       # shrinks by 8, as SD's; the tiny VAE by 2
    with pytest.raises(ConfigError, match="shrinks its control image by 8 but this model's latents are 1/2"):
        pipe.generate(GenerationConfig("x", steps=1), controls=[Control(_image(0), sd_like)])


def _to_ldm(state: dict, layers_per_block: int) -> dict:
    """A diffusers ControlNet state dict in the original (ldm) layout of the shared control_*.safetensors."""
    from sdlab.models.checkpoint import UNET_PREFIX
    from sdlab.models.ldm_export import unet_to_original

    fixed = {"controlnet_cond_embedding.conv_in": "input_hint_block.0",
             "controlnet_cond_embedding.conv_out": "input_hint_block.14", "controlnet_mid_block": "middle_block_out.0"}
    out, shared = {}, {}
    for key, value in state.items():
        head, _, param = key.rpartition(".")
        if head in fixed:
            out[f"{fixed[head]}.{param}"] = value
        elif head.startswith("controlnet_cond_embedding.blocks."):
            out[f"input_hint_block.{2 * (int(head.split('.')[-1]) + 1)}.{param}"] = value
        elif head.startswith("controlnet_down_blocks."):
            out[f"zero_convs.{head.split('.')[-1]}.0.{param}"] = value
        else:
            shared[key] = value
    out.update({k.removeprefix(UNET_PREFIX): v for k, v in unet_to_original(shared, layers_per_block).items()})
    return out


def test_an_original_layout_file_loads_as_the_diffusers_controlnet(pipe, tmp_path):
    from safetensors.torch import save_file

    from sdlab.control.loading import load_controlnet

    torch.manual_seed(3)
    net = controlnet_from_unet(pipe.c.unet)          # SD's conditioning embedding (x8), as in the shared files
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(_to_ldm(state, pipe.c.unet.config.layers_per_block), tmp_path / "control_tiny.safetensors")
    loaded = load_controlnet(tmp_path / "control_tiny.safetensors", pipe.c.unet).state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_controlnet_from_a_text_embedding_unet_keeps_its_heads():
    """diffusers' from_unet leaves addition_embed_type_num_heads at 64; a UNet that adds its pooled
    text with fewer heads (as the shipped model does) gets a ControlNet that cannot run a step."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
                                attention_head_dim=2, addition_embed_type="text", addition_embed_type_num_heads=3)
    x, t, cond = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 5, 12)
    hint = torch.randn(1, 3, 8, 8)
    with pytest.raises(RuntimeError):
        ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8,))(x, t, cond, hint)
    net = controlnet_from_unet(unet, conditioning_embedding_out_channels=(8,))
    assert net.config.addition_embed_type_num_heads == 3
    out = net(x, t, cond, hint)
    assert all(torch.isfinite(r).all() for r in out.down_block_res_samples)
    assert all(torch.equal(a, b) for a, b in zip(net.add_embedding.state_dict().values(),
                                                 unet.add_embedding.state_dict().values()))   # the UNet's weights
