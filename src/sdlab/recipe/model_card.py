"""MODEL_CARD.md for the shipped model: recipe, size, training cost and oracle scores."""

from __future__ import annotations

import json
from pathlib import Path

from ..io.atomic import atomic_write_text
from ..world import spec
from . import architecture


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def _scores_table(report: dict) -> str:
    cols = ("background", "color", "shape", "size", "position", "all", "seconds_per_image")
    rows = ["| prompt set @ CFG | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, res in report["results"].items():
        rows.append(f"| {name} | " + " | ".join(f"{res.get(c, float('nan')):.3f}" for c in cols) + " |")
    return "\n".join(rows)


def _vocab_size(model_dir: Path) -> int:
    return len(json.loads((Path(model_dir) / "tokenizer" / "vocab.json").read_text(encoding="utf-8")))


def write_model_card(model_dir: Path, summary: dict, report: dict, hardware: str, extra: str = "") -> Path:
    model_dir = Path(model_dir)
    unet_s, vae_s = summary.get("unet", {}), summary.get("vae", {})
    dec_s, clip_s = summary.get("vae_decoder", {}), summary.get("clip", {})
    held = ", ".join(f"{c} {s}" for c, s in sorted(spec.HELD_OUT_COMBOS))
    text = f"""# shapes-sd: the model sdlab ships

A small but real latent diffusion model in the diffusers layout, trained from scratch by
`sdlab world train-model` on the procedural shapes world. Every component is the type a
Stable Diffusion checkpoint uses, so every sdlab code path is exercised on it.

## Architecture
- VAE: `AutoencoderKL` {architecture.vae_config()['block_out_channels']}, 4x downsampling, 64x64 RGB -> 4x16x16,
  scaling factor {unet_s.get('scaling_factor', float('nan')):.4f}.
- Text encoder: `CLIPTextModel` (hidden {architecture.TEXT_DIM}, 4 layers, 77 tokens) with Stable Diffusion's own
  `CLIPTokenizer` vocabulary ({_vocab_size(model_dir):,} BPE tokens, so prompts tokenize as in SD); pre-trained
  contrastively with a ViT image tower, then trained on with the UNet at half its learning rate.
- UNet: `UNet2DConditionModel` {architecture.unet_config()['block_out_channels']}, cross-attention at 16x16 and 8x8,
  pooled text added to the time embedding (`addition_embed_type="text"`).
- Schedule: scaled-linear betas rescaled to zero terminal SNR, v-prediction, trailing timesteps
  (Lin et al. 2023). Size on disk: {_folder_mb(model_dir):.1f} MiB (fp32 safetensors).

## Training ({hardware})
| stage | steps | minutes | result |
|---|---|---|---|
| VAE (object-weighted L1+MSE, KL 1e-8), batch 16 | {vae_s.get('step', 0)} | {vae_s.get('seconds', 0) / 60:.1f} | oracle readback of reconstructions: shape {vae_s.get('readback', {}).get('shape', float('nan')):.3f} |
| decoder fine-tune (edge loss, latent noise), batch 16 | {dec_s.get('step', 0)} | {dec_s.get('seconds', 0) / 60:.1f} | readback: {dec_s.get('readback', {})} |
| CLIP pair (contrastive), batch 128 | {clip_s.get('step', 0)} | {clip_s.get('seconds', 0) / 60:.1f} | text->image top-1 among 256: {clip_s.get('retrieval_top1', float('nan')):.3f} |
| UNet (v-prediction MSE, 10% caption dropout, EMA), batch 64; text encoder jointly from step {unet_s.get('optimizer_start', 0)} | {unet_s.get('step', 0)} | {unet_s.get('seconds', 0) / 60:.1f} | see scores |

Held-out colour-shape pairs (never rendered in training): {held}.
Reserved for personalization (never in base training): shapes {', '.join(spec.RESERVED_SHAPES)}; fills {', '.join(spec.RESERVED_FILLS)}.

## Oracle scores
{report['n']} samples per prompt set (one fresh scene and seed per sample, its full caption as the
prompt), {report['steps']} steps, sampler {report['sampler']}. "all" = every scored attribute right.

{_scores_table(report)}
{extra}
Reproduce: `sdlab world eval-model --model PATH --n {report['n']}`.
"""
    return atomic_write_text(model_dir / "MODEL_CARD.md", text)


def card(model_dir: Path, run_dir: Path, n: int = 64, hardware: str = "", log=print) -> Path:
    """Evaluate `model_dir` with the oracle (eval.json) and write its MODEL_CARD.md."""
    import platform

    import torch

    from ..pipeline import Pipeline
    from .assemble import training_summary
    from .evaluate import evaluate

    report = evaluate(Pipeline.load(model_dir), n=n)
    log(json.dumps(report, indent=2))
    atomic_write_text(Path(model_dir) / "eval.json", json.dumps(report, indent=2))
    hardware = hardware or f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return write_model_card(model_dir, training_summary(run_dir), report, hardware)
