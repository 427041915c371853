"""Evaluation: oracle rates on known images, Frechet distance against its closed form, the
shipped CLIP's scores, checkpoints applied to a pipeline, and the report end to end."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from sdlab.evaluate import concept as ce
from sdlab.evaluate.scores import frechet_distance
from sdlab.world.render import render
from sdlab.world.scene import single_object_scene


class RenderPipe:
    """Stands in for a model: draws a heart for prompts with the token, else a circle, in the
    colour the prompt names (blue when it names none)."""

    def generate(self, cfg):
        from sdlab.pipeline import GenerationResult

        words = cfg.prompt.split()
        shape = "heart" if "<tok>" in words else "circle"
        color = next((w for w in words if w in ("red", "green", "blue")), "blue")
        n = cfg.batch_size * cfg.batch_count
        rng = random.Random(cfg.seed)
        imgs = [render(single_object_scene(shape, color, "large", "center", "white", rng)) for _ in range(n)]
        return GenerationResult(imgs, list(range(n)), [""] * n)


def test_oracle_rates_on_known_images():
    probes = ce.concept_probes("<tok>", {"shape": "heart"}, color="red", position="left")
    rates, images = ce.concept_report(RenderPipe(), probes, n=3)
    assert rates["detection"] == 1.0 and rates["color"] == 1.0 and rates["color+concept"] == 1.0
    assert rates["position"] == 0.0                   # the stand-in always draws in the centre
    assert rates["color+position+concept"] == 0.0 and "a red <tok> on the left" in images
    assert len(images["a <tok>"]) == 3
    d = ce.drift(RenderPipe(), RenderPipe(), ce.class_probes(shapes=("circle", "square"), colors=("red",)), n=2)
    assert d["same_seed_agreement"] == 1.0 and d["accuracy_drop"] == 0.0 and d["base_accuracy"] == 0.5


class ScenePipe:
    """Stands in for a fine-tuned model: renders the world scene a caption names, striped or
    not as the caption says (`adopts=False`: always solid, a model that learned nothing)."""

    def __init__(self, scenes, adopts=True):
        from sdlab.world.captions import full_caption

        self.by_caption = {full_caption(s): s for s in scenes}
        self.adopts = adopts

    def generate(self, cfg):
        from sdlab.pipeline import GenerationResult

        scene = self.by_caption[cfg.prompt]
        if not self.adopts:
            scene = replace_fill(scene)
        return GenerationResult([render(scene)], [cfg.seed], [""])


def test_world_prompts_read_style_adoption():
    plain, styled = ce.world_scenes({"fill": "striped"}, 6)
    assert len(plain) == len(styled) == 6
    assert all(p.objects[0].fill == "solid" and s.objects[0].fill == "striped" for p, s in zip(plain, styled))
    assert all(replace_fill(s) == p for p, s in zip(plain, styled))       # only the concept's attribute changed
    rates, images, prompts = ce.world_report(ScenePipe(plain + styled), {"fill": "striped"}, 6)
    assert rates == {"adoption": 1.0, "all_attributes": 1.0, "plain_adoption": 0.0}
    assert len(images) == 6 and all("striped" in p for p in prompts)
    rates, _, _ = ce.world_report(ScenePipe(plain + styled, adopts=False), {"fill": "striped"}, 6)
    assert rates["adoption"] == 0.0 and rates["all_attributes"] == 0.0 and rates["plain_adoption"] == 0.0


def replace_fill(scene, fill="solid"):
    """The scene with its one object in `fill`."""
    from dataclasses import replace

    return replace(scene, objects=(replace(scene.objects[0], fill=fill),))


def test_a_local_dino_folder_gives_image_features(tmp_path):
    """Any local transformers vision model (here a random DINOv2) is an image encoder: unit
    features from its pooled output, no text tower."""
    from transformers import Dinov2Config, Dinov2Model

    from sdlab.errors import ModelLoadError
    from sdlab.evaluate.features import Encoder

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8)
    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    enc = Encoder(tmp_path / "dino")
    rng = random.Random(0)
    images = [render(single_object_scene(s, "red", "large", "center", "white", rng)) for s in ("circle", "square")]
    feats = enc.images(images + images[:1])
    assert feats.shape == (3, 32) and not enc.is_clip and enc.size == 32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5) and torch.allclose(feats[0], feats[2])
    with pytest.raises(ModelLoadError, match="no text tower"):
        enc.texts(["a circle"])
    with pytest.raises(ModelLoadError, match="not a local transformers model folder"):
        Encoder(tmp_path)


def test_frechet_distance_closed_form():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 3, generator=g)
    shift = torch.tensor([1.0, -2.0, 0.5])
    assert abs(frechet_distance(a, a + shift) - float((shift ** 2).sum())) < 1e-6   # same covariance
    b = a * 2                                                                         # S_b = 4 S_a
    s = np.cov(a.double().numpy(), rowvar=False)
    mu2 = float((a.double().mean(0) ** 2).sum())                                     # |mu_b - mu_a|^2
    assert abs(frechet_distance(a, b) - (mu2 + float(np.trace(s)) * (1 + 4 - 2 * 2))) < 1e-6


def test_diversity_is_zero_for_copies_and_grows_with_spread():
    from sdlab.evaluate.scores import diversity

    g = torch.Generator().manual_seed(0)
    one = torch.nn.functional.normalize(torch.randn(1, 8, generator=g), dim=-1)
    spread = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    assert abs(diversity(one.repeat(5, 1))) < 1e-6
    assert diversity(spread) > diversity(torch.nn.functional.normalize(one + 0.1 * spread, dim=-1)) > 0


def test_shipped_clip_scores_prefer_the_right_text_and_set():
    from sdlab.evaluate.features import Encoder
    from sdlab.evaluate.scores import clip_score, image_similarity

    enc = Encoder()
    rng = random.Random(0)
    reds = [render(single_object_scene("circle", "red", "large", "center", "blue", rng)) for _ in range(6)]
    stars = [render(single_object_scene("star", "yellow", "large", "left", "black", rng)) for _ in range(6)]
    f_red, f_star = enc.images(reds), enc.images(stars)
    right = clip_score(f_red, enc.texts(["a large red circle on a blue background"] * 6))
    wrong = clip_score(f_red, enc.texts(["a large yellow star on a black background"] * 6))
    assert right > wrong
    assert image_similarity(f_red[:3], f_red[3:]) > image_similarity(f_red[:3], f_star[:3])
    assert frechet_distance(f_red, f_red.flip(0)) < frechet_distance(f_red, f_star)


def test_checkpoints_apply_and_report(tiny_model_dir, tmp_path, capsys):
    from sdlab.cli.main import main
    from sdlab.evaluate import apply
    from sdlab.models import lora as lora_files
    from sdlab.pipeline import Pipeline
    from sdlab.world.data import export_folder

    data = export_folder(tmp_path / "data", 3, seed=9)
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--instance-prompt", "x", "--max-steps", "2",
              "--checkpoint-every", "1", "--keep-last", "2", "--device", "cpu", "--lr", "1e-2"]
    assert main(["train", "textual-inversion", *common, "--output-dir", str(tmp_path / "ti"), "--num-vectors", "2"]) == 0
    assert main(["train", "lora", *common, "--output-dir", str(tmp_path / "lora"), "--validation-split", "0.34",
                 "--validate-every", "1"]) == 0
    ti = apply.load_checkpoint(tiny_model_dir, tmp_path / "ti" / "checkpoints" / "step-00000002")
    final = Pipeline.load(tiny_model_dir, device="cpu")
    from sdlab.text.embeddings import load_embedding
    load_embedding(final, tmp_path / "ti" / "learned_embeds.safetensors")
    assert torch.equal(ti.encode_prompt(["a <my-shape>"]), final.encode_prompt(["a <my-shape>"]))
    lo = apply.load_checkpoint(tiny_model_dir, tmp_path / "lora" / "checkpoints" / "step-00000002")
    ref = Pipeline.load(tiny_model_dir, device="cpu")
    lora_files.apply_lora(ref, tmp_path / "lora" / "lora_kohya.safetensors")
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(lo.c.unet.parameters(), ref.c.unet.parameters()))

    out = tmp_path / "report"
    assert main(["eval", "--model", str(tiny_model_dir), "--run-dir", str(tmp_path / "ti"), "--n", "2", "--steps", "2",
                 "--out", str(out), "--encoder", str(_tiny_clip(tmp_path)), "--confirm-seed", "50"]) == 0
    import json
    rows = json.loads((out / "report.json").read_text())
    assert [r["step"] for r in rows] == [1, 2, rows[-1]["step"]] and rows[-1]["confirm_seed"] == 50
    assert rows[-1]["label"] in ("step-00000001", "step-00000002")
    assert all(0 <= r["detection"] <= 1 and r["frechet_distance"] >= 0 for r in rows)
    md = (out / "report.md").read_text()
    assert "| step-00000001 | 1 |" in md and "rates.png" in md and "Re-read on fresh samples (seed 50)" in md
    code = main(["eval", "--model", str(tiny_model_dir), "--run-dir", str(tmp_path / "ti"), "--n", "4",
                 "--confirm-seed", "2"])
    assert code == 2 and "reuses samples" in capsys.readouterr().err

    # without --model, a run is evaluated on the base model it recorded (the shipped one would not fit)
    recorded = json.loads((tmp_path / "lora" / "training_config.json").read_text())
    assert recorded["model"] == str(tiny_model_dir.resolve()) and recorded["method"] == "lora"
    assert main(["eval", "--run-dir", str(tmp_path / "lora"), "--n", "1", "--steps", "1", "--no-clip",
                 "--baseline", "--out", str(tmp_path / "report-lora")]) == 0
    rows = json.loads((tmp_path / "report-lora" / "report.json").read_text())
    assert [r["label"] for r in rows] == ["base-model", "step-00000001", "step-00000002"]
    assert "val_loss" not in rows[0] and all(r["val_loss"] > 0 for r in rows[1:])    # the run's own, per step
    assert "| base-model | 0 |" in (tmp_path / "report-lora" / "report.md").read_text()
    pick = next(line for line in (tmp_path / "report-lora" / "report.md").read_text().splitlines()
                if line.startswith("Best by"))
    assert "**step-0000000" in pick                               # the base model is shown, never picked

    # a style fine-tune: the world's captions with the concept put in, no token
    world = ["eval", "--run-dir", str(tmp_path / "lora"), "--world-prompts", "--concept", "fill=striped", "--n", "2",
             "--steps", "1", "--out", str(tmp_path / "report-world")]
    assert main(world + ["--no-clip"]) == 0
    rows = json.loads((tmp_path / "report-world" / "report.json").read_text())
    assert {"adoption", "all_attributes", "plain_adoption"} <= set(rows[0]) and "detection" not in rows[0]
    md = (tmp_path / "report-world" / "report.md").read_text()
    assert "World prompts (no token): 2 of the shapes world's full captions" in md and "adoption + all attributes" in md
    assert main(world + ["--oracle", "off", "--concept-text", "x"]) == 2
    assert "--world-prompts samples the shapes world's captions and needs its oracle" in capsys.readouterr().err
    assert main(world + ["--token", "sks"]) == 2
    assert "name the concept by its own word (striped): drop --token 'sks'" in capsys.readouterr().err
    vae = tiny_model_dir / "vae"
    assert main(["eval", "--model", str(tiny_model_dir), "--artifact", str(vae), "--vae", str(vae), "--n", "1"]) == 2
    assert "is a VAE itself: give it as --artifact or as --vae, not both" in capsys.readouterr().err

    # any model: no oracle, the encoder's scores only (subject and prompt fidelity, same-seed drift)
    refs = export_folder(tmp_path / "refs", 2, seed=4)
    clip = _tiny_clip(tmp_path)
    off = ["eval", "--run-dir", str(tmp_path / "lora"), "--oracle", "off", "--n", "2", "--steps", "1",
           "--encoder", str(clip), "--out", str(tmp_path / "report-off")]
    for extra, message in [([], "--concept-text"), (["--concept-text", "a dog", "--drift"], "--class-prompt"),
                           (["--concept-text", "a dog", "--no-clip"], "drop --no-clip")]:
        assert main(off + extra) == 2 and message in capsys.readouterr().err
    assert main(off + ["--concept-text", "a dog", "--reference", str(refs), "--drift", "--class-prompt",
                       "a red circle"]) == 0
    rows = json.loads((tmp_path / "report-off" / "report.json").read_text())
    assert "detection" not in rows[0]
    assert {"clip_text_image", "image_similarity", "frechet_distance", "diversity", "clip_text_context",
            "drift_similarity"} <= set(rows[0])
    assert all(-1 <= r["drift_similarity"] <= 1.0 + 1e-6 for r in rows)
    md = (tmp_path / "report-off" / "report.md").read_text()
    assert "No oracle (any model)" in md and "image similarity + context CLIP score" in md


def test_wilson_interval_and_pick():
    from sdlab.evaluate.report import pick_best, wilson_interval

    lo, hi = wilson_interval(0.5, 32)
    assert abs(lo - 0.336) < 1e-3 and abs(hi - 0.664) < 1e-3
    assert wilson_interval(0.0, 32)[0] == 0.0 and abs(wilson_interval(0.0, 32)[1] - 0.107) < 1e-3
    assert wilson_interval(1.0, 8)[1] == 1.0 and wilson_interval(1.0, 8)[0] < 0.7
    rows = [("a", 1, {"detection": 0.5, "color+concept": 0.5}, []), ("b", 2, {"detection": 1.0, "color+concept": 0.0}, []),
            ("c", 3, {"detection": 0.75, "color+concept": 0.25}, []), ("d", 4, {"detection": 0.75}, [])]
    assert pick_best(rows)[0] == "a"   # ties go to the earlier step


def test_pick_skips_drifted_checkpoints(tmp_path):
    from sdlab.evaluate.report import EvalSettings, pick_best, write_report

    img = [Image.new("RGB", (8, 8))]
    rows = [("a", 1, {"detection": 0.5, "color+concept": 0.5, "drift_accuracy_drop": 0.05}, img),
            ("b", 2, {"detection": 1.0, "color+concept": 1.0, "drift_accuracy_drop": 0.40}, img),
            ("c", 3, {"detection": 0.75, "color+concept": 0.5, "drift_accuracy_drop": 0.10}, img)]
    assert pick_best(rows)[0] == "b"
    assert pick_best(rows, max_drift=0.1)[0] == "c"     # the drop limit is inclusive
    assert pick_best(rows, max_drift=0.01)[0] == "b"    # none within the limit: best over all
    md = write_report(tmp_path / "r1", rows, EvalSettings(n=4, max_drift=0.1)).read_text()
    assert "fell by at most 0.10: **c** (step 3)" in md
    md = write_report(tmp_path / "r2", rows, EvalSettings(n=4, max_drift=0.01)).read_text()
    assert "No checkpoint kept" in md and "**b** (step 2)" in md


def test_pick_skips_collapsed_checkpoints(tmp_path):
    """A checkpoint that draws one picture for "a <token>" (diversity near 0) is not picked,
    however high its rates; a floor no checkpoint meets is dropped, and the report says so."""
    from sdlab.evaluate.report import EvalSettings, pick_best, write_report

    img = [Image.new("RGB", (8, 8))]
    rows = [("a", 1, {"detection": 0.75, "color+concept": 1.0, "diversity": 0.60, "drift_accuracy_drop": 0.30}, img),
            ("b", 2, {"detection": 1.00, "color+concept": 1.0, "diversity": 0.00, "drift_accuracy_drop": 0.00}, img),
            ("c", 3, {"detection": 0.50, "color+concept": 1.0, "diversity": 0.70, "drift_accuracy_drop": 0.05}, img)]
    assert pick_best(rows)[0] == "b"
    assert pick_best(rows, floor=0.19)[0] == "a"
    assert pick_best(rows, max_drift=0.1, floor=0.19)[0] == "c"
    assert pick_best(rows, floor=0.9)[0] == "b"                      # nobody keeps 0.9: the floor is dropped
    md = write_report(tmp_path / "r", rows, EvalSettings(n=4, max_drift=0.1, diversity_floor=0.19,
                                                         reference_diversity=0.76)).read_text()
    assert ("among the checkpoints whose class-prompt accuracy fell by at most 0.10 and whose diversity is at least "
            "0.19 (25% of the reference images' 0.76), i.e. not collapsed onto one picture: **c** (step 3)") in md
    md = write_report(tmp_path / "r2", rows, EvalSettings(n=4, max_drift=None, diversity_floor=0.9,
                                                          reference_diversity=0.9)).read_text()
    assert "No checkpoint kept a diversity of 0.90 (100% of the reference images' 0.90): all collapsed" in md
    assert "over all of them: **b** (step 2)" in md


@pytest.mark.parametrize("args, message", [
    (["--max-drift", "1.5"], "--max-drift is a drop in accuracy between 0 and 1, got 1.5"),
    (["--min-diversity", "2"], "--min-diversity is a share of the reference images' diversity between 0 and 1"),
    (["--concept", "shape=hexagon"], "--concept shape=hexagon: the oracle knows shape circle, square"),
    (["--concept", "fill"], "--concept must be ATTR=VALUE"),
    (["--n", "0"], "--n must be >= 1, got 0"),
])
def test_eval_refuses_bad_settings(capsys, args, message):
    from sdlab.cli.main import main

    assert main(["eval", "--artifact", "x", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _tiny_clip(tmp_path):
    """A random CLIP pair small enough for the test, at the shipped pair's image size."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from sdlab.evaluate.features import SHIPPED_CLIP

    cfg = CLIPConfig(text_config=dict(vocab_size=CLIPTokenizer.from_pretrained(SHIPPED_CLIP).vocab_size + 2,
                                      hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                     vision_config=dict(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2), projection_dim=8)
    torch.manual_seed(0)
    path = tmp_path / "clip"
    CLIPModel(cfg).save_pretrained(path)
    CLIPTokenizer.from_pretrained(SHIPPED_CLIP).save_pretrained(path)
    return path
