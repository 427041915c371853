"""Assemble the trained stages into a diffusers Stable Diffusion folder (+ the CLIP pair)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from ..io.atomic import atomic_dir
from . import recipe
from .checkpoint import load_state


def export_text_encoder(run_dir: Path) -> Path:
    """Split the CLIP pair's text tower out as a CLIPTextModel folder."""
    run_dir = Path(run_dir)
    clip = CLIPModel.from_pretrained(run_dir / "clip" / "model")
    text = CLIPTextModel(clip.config.text_config)
    text.load_state_dict(clip.text_model.state_dict())
    text.save_pretrained(run_dir / "text_encoder")
    return run_dir / "text_encoder"


def assemble(run_dir: Path, out_dir: Path, clip_out: Path | None = None) -> Path:
    """Write `out_dir` in the diffusers layout with the EMA UNet and the latent scale."""
    run_dir = Path(run_dir)
    vae_dir = run_dir / "vae_decoder" if (run_dir / "vae_decoder" / "model").exists() else run_dir / "vae"
    vae = AutoencoderKL.from_pretrained(vae_dir / "model")
    vae.register_to_config(scaling_factor=load_state(run_dir / "unet")["scaling_factor"])
    joint = run_dir / "unet" / "text_encoder_ema"          # trained with the UNet (train_unet)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=CLIPTextModel.from_pretrained(joint if joint.exists() else run_dir / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(run_dir / "tokenizer"),
        unet=UNet2DConditionModel.from_pretrained(run_dir / "unet" / "ema"),
        scheduler=EulerDiscreteScheduler(**recipe.scheduler_config()),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / "training_state.json").write_text(json.dumps(training_summary(run_dir), indent=1))
        # CLIPTokenizer folders must carry vocab.json + merges.txt to load everywhere; the
        # 3.6 MB tokenizer.json transformers 5 adds is rebuilt from them on load.
        (Path(tmp) / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(run_dir / "tokenizer" / name, Path(tmp) / "tokenizer" / name)
    if clip_out is not None:
        with atomic_dir(clip_out) as tmp:
            CLIPModel.from_pretrained(run_dir / "clip" / "model").save_pretrained(tmp, safe_serialization=True)
            CLIPTokenizer.from_pretrained(run_dir / "tokenizer").save_pretrained(tmp)
            for name in ("vocab.json", "merges.txt"):
                shutil.copy(run_dir / "tokenizer" / name, Path(tmp) / name)
    return Path(out_dir)


def seed_run_from_model(model_dir: Path, clip_dir: Path, run_dir: Path) -> Path:
    """Lay out a run folder from a shipped model (and its CLIP pair) so that
    `train_model` continues its UNet from those weights (fresh optimizer; EMA restarts from
    them) instead of starting from scratch; finished stages keep their recorded budgets."""
    model_dir, run_dir = Path(model_dir), Path(run_dir)
    states = json.loads((model_dir / "training_state.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer", "text_encoder"):
        shutil.copytree(model_dir / name, run_dir / name, dirs_exist_ok=True)
    stages = {"vae": model_dir / "vae", "vae_decoder": model_dir / "vae", "clip": Path(clip_dir),
              "unet": model_dir / "unet"}
    for stage, src in stages.items():
        shutil.copytree(src, run_dir / stage / "model", dirs_exist_ok=True)
        (run_dir / stage / "state.json").write_text(json.dumps(states[stage]))
    shutil.copytree(model_dir / "unet", run_dir / "unet" / "ema", dirs_exist_ok=True)
    for name in ("text_encoder", "text_encoder_ema"):        # continue the model's own encoder
        shutil.copytree(model_dir / "text_encoder", run_dir / "unet" / name, dirs_exist_ok=True)
    return run_dir


def training_summary(run_dir: Path) -> dict:
    """Steps and seconds of each stage, for the model card."""
    out = {}
    for stage in ("vae", "vae_decoder", "clip", "unet"):
        st = load_state(Path(run_dir) / stage) or {}
        out[stage] = {k: v for k, v in st.items()}
    return json.loads(json.dumps(out))
