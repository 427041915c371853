"""`sdlab world train-model`: the whole recipe for the shipped model, resumable.

Stages run in order, each up to its time budget (cumulative over resumes): tokenizer,
VAE, decoder fine-tune (encoder frozen), CLIP pair, UNet, then assembly into a diffusers
folder. Rerunning with the same
run folder continues where the last run stopped; a larger budget trains further.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .assemble import assemble, export_text_encoder, seed_run_from_model
from .checkpoint import load_state
from .tokenizer_build import build_tokenizer
from .train_clip import train_clip
from .train_unet import train_unet
from .train_vae import finetune_decoder, train_vae


def _remaining(run_dir: Path, stage: str, minutes: float) -> float:
    st = load_state(run_dir / stage) or {}
    return max(0.0, minutes - st.get("seconds", 0.0) / 60)


def train_model(run_dir: Path, out_dir: Path, *, vae_minutes: float = 25, decoder_minutes: float = 25, clip_minutes: float = 12,
                unet_minutes: float = 120, cache_size: int = 60000, clip_out: Path | None = None,
                init_from: Path | None = None, init_clip: Path | None = None, threads: int | None = None,
                log=print) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if threads:
        torch.set_num_threads(threads)
    if init_from is not None and not run_dir.exists():
        seed_run_from_model(init_from, init_clip or Path(init_from).parent / "shapes-clip", run_dir)
    if not (run_dir / "tokenizer" / "vocab.json").exists():
        build_tokenizer(run_dir / "tokenizer")
    if (m := _remaining(run_dir, "vae", vae_minutes)) > 0:
        train_vae(run_dir, m, log=log)
    if (m := _remaining(run_dir, "vae_decoder", decoder_minutes)) > 0:
        finetune_decoder(run_dir, m, log=log)
    if (m := _remaining(run_dir, "clip", clip_minutes)) > 0:
        train_clip(run_dir, run_dir / "tokenizer", m, log=log)
    if not (run_dir / "text_encoder").exists():
        export_text_encoder(run_dir)
    if (m := _remaining(run_dir, "unet", unet_minutes)) > 0:
        train_unet(run_dir, m, cache_size=cache_size, log=log)
    if (run_dir / "vae_decoder" / "model").exists():
        log("using the fine-tuned decoder from vae_decoder/")
    return assemble(run_dir, out_dir, clip_out)


def card(model_dir: Path, run_dir: Path, n: int = 64, hardware: str = "", log=print) -> Path:
    """Evaluate `model_dir` with the oracle and write its MODEL_CARD.md."""
    import json
    import platform

    from ..pipeline import Pipeline
    from .assemble import training_summary
    from .evaluate_model import evaluate
    from .model_card import write_model_card

    report = evaluate(Pipeline.load(model_dir), n=n)
    log(json.dumps(report, indent=2))
    (Path(model_dir) / "eval.json").write_text(json.dumps(report, indent=2))
    hardware = hardware or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return write_model_card(model_dir, training_summary(run_dir), report, hardware)
