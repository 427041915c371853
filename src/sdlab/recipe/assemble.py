"""Assemble the trained stages into a diffusers Stable Diffusion folder (+ the CLIP pair), and
lay out a run folder from such a model to train on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from ..io.atomic import atomic_dir
from ..models.generation_defaults import FILE as GENERATION_DEFAULTS
from ..models.shipped import SHIPPED
from ..models.training_defaults import FILE as TRAINING_DEFAULTS
from ..models.text_encoder_file import rewrite_portable
from . import architecture, stages
from .unet import ema_models
from .vae import final_vae

TOKENIZER_FILES = ("vocab.json", "merges.txt")
RECIPE_SETTINGS = (GENERATION_DEFAULTS, TRAINING_DEFAULTS)


def _tokenizer_files(run_dir: Path, folder: Path) -> None:
    """CLIPTokenizer folders must carry vocab.json + merges.txt to load everywhere; the
    3.6 MB tokenizer.json transformers 5 adds is rebuilt from them on load."""
    (folder / "tokenizer.json").unlink(missing_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(run_dir) / "tokenizer" / name, folder / name)


def assemble(run_dir: Path, out_dir: Path, clip_out: Path | None = None) -> Path:
    """Write `out_dir` in the diffusers layout with the EMA UNet and text encoder and the latent scale."""
    run_dir = Path(run_dir)
    unet_state = stages.load(run_dir, "unet")
    unet, text_encoder = ema_models(unet_state)
    vae = final_vae(run_dir)
    vae.register_to_config(scaling_factor=unet_state["progress"]["scaling_factor"])
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(run_dir / "tokenizer"),
        unet=unet, scheduler=EulerDiscreteScheduler(**architecture.scheduler_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        rewrite_portable(tmp / "text_encoder")        # text_model. keys: transformers 4.x loads them too
        (tmp / "training_state.json").write_text(json.dumps(training_summary(run_dir), indent=1))
        _tokenizer_files(run_dir, tmp / "tokenizer")
        recipe_settings(tmp)
    if clip_out is not None:
        with atomic_dir(clip_out) as tmp:
            clip = stages.build_model(stages.load(run_dir, "clip")["models"]["clip"])
            clip.save_pretrained(tmp, safe_serialization=True)
            CLIPTokenizer.from_pretrained(run_dir / "tokenizer").save_pretrained(tmp)
            _tokenizer_files(run_dir, tmp)
    return Path(out_dir)


def recipe_settings(folder: Path, shipped: Path = SHIPPED["shapes-sd"]) -> None:
    """The settings measured on the shipped model, this recipe's output (its guidance scale, its
    fine-tune's numbers), copied into `folder` so a model trained again recommends the same."""
    for name in RECIPE_SETTINGS:
        if (shipped / name).is_file():
            shutil.copy(shipped / name, Path(folder) / name)


def seed_run_from_model(model_dir: Path, clip_dir: Path, run_dir: Path) -> Path:
    """Lay out a run folder from a shipped model (and its CLIP pair) so that `train_model`
    continues its UNet and text encoder from those weights (fresh optimizer; EMA restarts from
    them) instead of starting from scratch; finished stages keep their recorded budgets (the UNet's
    caption mismatch is the new run's own)."""
    model_dir, run_dir = Path(model_dir), Path(run_dir)
    budgets = json.loads((model_dir / "training_state.json").read_text())
    shutil.copytree(model_dir / "tokenizer", run_dir / "tokenizer", dirs_exist_ok=True)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae")
    models = {"vae": {"vae": vae}, "vae_decoder": {"vae": vae}, "clip": {"clip": CLIPModel.from_pretrained(clip_dir)},
              "unet": {"unet": UNet2DConditionModel.from_pretrained(model_dir / "unet"),
                       "text_encoder": CLIPTextModel.from_pretrained(model_dir / "text_encoder")}}
    for stage, found in models.items():
        progress = {k: v for k, v in budgets[stage].items() if k != "caption_mismatch"}   # the new run's choice
        stages.save(run_dir, stage, {"progress": progress,
                                     "models": {k: stages.model_entry(m) for k, m in found.items()}})
    return run_dir


def training_summary(run_dir: Path) -> dict:
    """Steps, seconds and measurements of each stage, for the model card."""
    return {stage: stages.progress(run_dir, stage) for stage in stages.STAGES}
