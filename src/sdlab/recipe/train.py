"""`sdlab world train-model`: the whole recipe for the shipped model, resumable.

Stages run in order, each up to its time budget (cumulative over resumes): tokenizer,
VAE, decoder fine-tune (encoder frozen), CLIP pair, UNet, then assembly into a diffusers
folder. Rerunning with the same run folder continues where the last run stopped (from each
stage's newest checkpoint); a larger budget trains further.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..io.atomic import clean_stale_temps
from .assemble import assemble, seed_run_from_model
from .clip import train_clip
from .stages import progress
from .tokenizer import build_tokenizer
from .unet import train_unet
from .vae import finetune_decoder, train_vae


def _remaining(run_dir: Path, stage: str, minutes: float) -> float:
    return max(0.0, minutes - progress(run_dir, stage).get("seconds", 0.0) / 60)


def train_model(run_dir: Path, out_dir: Path, *, vae_minutes: float = 25, decoder_minutes: float = 25, clip_minutes: float = 12,
                unet_minutes: float = 120, cache_size: int = 60000, clip_out: Path | None = None,
                init_from: Path | None = None, init_clip: Path | None = None, threads: int | None = None,
                caption_mismatch: float = 0.0, unet_lr: float = 6e-4, log=print) -> Path:
    if not 0 < unet_lr <= 1e-2:
        raise ConfigError(f"unet_lr is the UNet's peak learning rate, above 0 and at most 0.01; got {unet_lr:g}")
    if not 0 <= caption_mismatch <= 0.9:
        raise ConfigError(f"caption_mismatch is the share of captions taken from another scene, from 0 to 0.9; "
                          f"got {caption_mismatch:g}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if threads:
        torch.set_num_threads(threads)
    if init_from is not None and not run_dir.exists():
        seed_run_from_model(init_from, init_clip or Path(init_from).parent / "shapes-clip", run_dir)
    clean_stale_temps(run_dir, depth=2)           # a killed run's half-written checkpoints and caches
    recorded = progress(run_dir, "unet").get("caption_mismatch", caption_mismatch)
    if recorded != caption_mismatch:
        raise ConfigError(f"this run's UNet trained with --caption-mismatch {recorded:g}; resume it with the same "
                          f"value (got {caption_mismatch:g}) or start a new --run-dir (--init-from its model)")
    if not (run_dir / "tokenizer" / "vocab.json").exists():
        build_tokenizer(run_dir / "tokenizer")
    if (m := _remaining(run_dir, "vae", vae_minutes)) > 0:
        train_vae(run_dir, m, log=log)
    if (m := _remaining(run_dir, "vae_decoder", decoder_minutes)) > 0:
        finetune_decoder(run_dir, m, log=log)
    if (m := _remaining(run_dir, "clip", clip_minutes)) > 0:
        train_clip(run_dir, run_dir / "tokenizer", m, log=log)
    if (m := _remaining(run_dir, "unet", unet_minutes)) > 0:
        train_unet(run_dir, m, lr=unet_lr, cache_size=cache_size, caption_mismatch=caption_mismatch, log=log)
    if progress(run_dir, "vae_decoder"):
        log("using the fine-tuned decoder from vae_decoder/")
    return assemble(run_dir, out_dir, clip_out)
