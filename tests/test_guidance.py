"""Loss guidance and classifier guidance: the wrappers, their errors, and their effect."""

import pytest
import torch

from sdlab.config import GenerationConfig
from sdlab.errors import ConfigError, ModelLoadError
from sdlab.guidance.classifier import ClassifierGuidance, LatentClassifier, classifier_guidance
from sdlab.guidance.loss import LossGuidance, guidance_weight, loss_guidance
from sdlab.guidance.losses import ClipScorer, clip_loss, color_loss
from sdlab.pipeline import Pipeline
from sdlab.sampling import NoiseSchedule


def _const_denoiser(value):
    return lambda x, sigma, cond: torch.full_like(x, value)


def test_loss_guidance_moves_prediction_down_the_gradient():
    # loss = mean (x0 - 1)^2 on latents: gradient 2 (x0 - 1) / n, so x0 moves toward 1
    inner = _const_denoiser(0.0)
    g = LossGuidance(inner, lambda z: ((z - 1) ** 2).mean(dim=(1, 2, 3)), scale=100.0, on="latent")
    x = torch.zeros(2, 4, 2, 2)
    out = g(x, torch.tensor([1.0, 1.0]), None)
    n = 4 * 2 * 2
    expected = 100.0 * 0.5 * 2 / n          # scale * w(1) * |grad|
    assert torch.allclose(out, torch.full_like(out, expected))
    assert g.last_loss.tolist() == [1.0, 1.0]


def test_guidance_weight_is_bounded_and_sigma_squared_when_small():
    w = guidance_weight(torch.tensor([1e-3, 1.0, 4096.0])).flatten()
    assert w[0].item() == pytest.approx(1e-6, rel=1e-3)
    assert w[1].item() == pytest.approx(0.5)
    assert 0.999 < w[2].item() <= 1.0


def test_every_n_calls_and_sigma_max_skip():
    g = LossGuidance(_const_denoiser(0.0), lambda z: z.sum(dim=(1, 2, 3)), scale=1.0, on="latent", every=2)
    x = torch.zeros(1, 4, 2, 2)
    changed = [not torch.equal(g(x, 1.0, None), torch.zeros_like(x)) for _ in range(4)]
    assert changed == [True, False, True, False]
    skip = LossGuidance(_const_denoiser(0.0), lambda z: z.sum(dim=(1, 2, 3)), scale=1.0, on="latent", sigma_max=5)
    assert torch.equal(skip(x, 10.0, None), torch.zeros_like(x))


def test_through_model_differentiates_the_denoiser():
    inner = lambda x, sigma, cond: 3 * x          # noqa: E731  dx0/dx = 3
    g = LossGuidance(inner, lambda z: z.sum(dim=(1, 2, 3)), scale=1.0, on="latent", through_model=True)
    x = torch.ones(1, 4, 2, 2)
    out = g(x, 1.0, None)
    assert torch.allclose(out, 3 * x - 0.5 * 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": "strong"}, "scale must be a finite number"),
    ({"scale": True}, "scale must be a finite number"),
    ({"scale": 1.0, "every": 0}, "every must be an integer >= 1"),
    ({"scale": 1.0, "on": "pixels"}, "on must be one of image, latent"),
    ({"scale": 1.0, "on": "image"}, "needs a decode function"),
])
def test_bad_guidance_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LossGuidance(_const_denoiser(0.0), lambda z: z.sum(), **kwargs)


def test_loss_must_return_one_value_per_sample():
    g = LossGuidance(_const_denoiser(0.0), lambda z: z, scale=1.0, on="latent")
    with pytest.raises(ConfigError, match="one value per sample"):
        g(torch.zeros(2, 4, 2, 2), 1.0, None)


def test_color_loss_and_its_errors():
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1
    red[:, 1:] = -1
    loss = color_loss((255, 0, 0))
    assert loss(red).item() == pytest.approx(0.0, abs=1e-6)
    assert color_loss((0, 0, 255))(red).item() > 1.0
    for bad in [(255, 0), "blue", (300, 0, 0)]:
        with pytest.raises(ConfigError, match="colour target"):
            color_loss(bad)


def test_clip_loss_ranks_matching_text_lower():
    scorer = ClipScorer()
    from sdlab.recipe.data import to_tensor
    from sdlab.world.render import render
    from sdlab.world.scene import single_object_scene
    import random

    scene = single_object_scene("circle", "red", "large", "center", "blue", random.Random(0))
    x = to_tensor([render(scene)])
    right = clip_loss("a large red circle on a blue background", scorer)(x).item()
    wrong = clip_loss("a small yellow star on a white background", scorer)(x).item()
    assert right < wrong
    with pytest.raises(ConfigError, match="non-empty text"):
        clip_loss("  ", scorer)


def test_color_guidance_changes_generation(tiny_model_dir):
    pipe = Pipeline.load(tiny_model_dir)
    config = GenerationConfig("a red circle", steps=4, seed=3, cfg_scale=3.0)
    plain = pipe.generate(config).images[0]
    blue = pipe.generate(config, guidance=[loss_guidance(color_loss((0, 0, 255)), 200.0)]).images[0]
    import numpy as np

    b_plain = np.asarray(plain, dtype=float)[..., 2].mean()
    b_guided = np.asarray(blue, dtype=float)[..., 2].mean()
    assert b_guided > b_plain + 1.0


def test_classifier_guidance_raises_label_probability():
    torch.manual_seed(0)
    clf = LatentClassifier(["a", "b"], in_channels=4, channels=(8, 8), time_dim=16).eval()
    schedule = NoiseSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = ClassifierGuidance(_const_denoiser(0.0), clf, "b", 50.0, schedule)
    x, sigma = torch.randn(4, 4, 8, 8), torch.full((4,), 2.0)
    x0 = g(x, sigma, None)

    def prob_b(z):
        xt = z / (1 + 4.0) ** 0.5
        return torch.softmax(clf(xt, schedule.sigma_to_t(sigma)), -1)[:, 1]

    # moving x by the same shift the guidance put on x0 raises p(b | x_t)
    assert (prob_b(x + 0.01 * x0 / x0.norm()) > prob_b(x)).all()


def test_classifier_save_load_roundtrip_and_errors(tmp_path):
    clf = LatentClassifier(["circle", "square"], channels=(8, 8), time_dim=16)
    clf.save(tmp_path / "clf")
    back = LatentClassifier.load(tmp_path / "clf")
    assert back.labels == ["circle", "square"]
    for k, v in clf.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    with pytest.raises(ConfigError, match="unknown label 'heart'"):
        ClassifierGuidance(_const_denoiser(0.0), back, "heart", 1.0, NoiseSchedule())
    with pytest.raises(ModelLoadError, match="train one with"):
        LatentClassifier.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match="scale must be a finite number"):
        classifier_guidance("circle", "2", classifier=back)


def test_the_shipped_classifier_reads_the_shipped_models_latents():
    """The classifier is trained on one model's VAE latents: the shipped one must be the shipped model's."""
    import random

    from sdlab.pipeline import Pipeline
    from sdlab.recipe.data import render_batch
    from sdlab.world import spec
    from sdlab.world.scene import SceneSampler

    pipe, clf = Pipeline.load(), LatentClassifier.load()
    assert clf.labels == list(spec.BASE_SHAPES) and clf.config["model_hash"] == pipe.c.model_hash
    scenes, x = render_batch(SceneSampler(two_object_prob=0.0, generic_prob=0.0), random.Random(3), 64)
    with torch.no_grad():
        pred = clf(pipe.encode_image(x).float(), torch.zeros(64)).argmax(-1)
    truth = torch.tensor([spec.BASE_SHAPES.index(s.objects[0].shape) for s in scenes])
    assert (pred == truth).float().mean() >= 0.95
