"""Stage 2 of the base recipe: a CLIP pair (Radford et al. 2021) pre-trained contrastively
on shapes-world captions. Its text tower becomes the diffusion model's text encoder; the
pair is kept for CLIP scores in evaluation."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from ..world.captions import caption
from ..world.scene import SceneSampler
from . import architecture
from .data import render_batch
from .stages import Stage, optimizer_step, run_timed

CLIP_MEAN, CLIP_STD = 0.0, 1.0     # images go in as [-1, 1]


def retrieval_accuracy(clip, tok, n: int = 256, seed: int = 99) -> float:
    """Top-1 text->image retrieval accuracy on full captions of fresh scenes."""
    rng = random.Random(seed)
    scenes, x = render_batch(SceneSampler(two_object_prob=0.0, generic_prob=0.0), rng, n)
    ids = tok([caption(s, None) for s in scenes], padding=True, return_tensors="pt")
    dev = next(clip.parameters()).device
    with torch.no_grad():
        out = clip(input_ids=ids.input_ids.to(dev), attention_mask=ids.attention_mask.to(dev), pixel_values=x.to(dev))
    return (out.logits_per_text.argmax(1).cpu() == torch.arange(n)).float().mean().item()


def train_clip(run_dir: Path, tokenizer_dir: Path, minutes: float, batch: int = 128, lr: float = 5e-4,
               log=print) -> Path:
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    stage, dev = Stage(run_dir, "clip"), architecture.train_device()
    clip = stage.model("clip", lambda: architecture.build_clip(tok), dev)
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.05)
    stage.restore_optimizer(opt)
    rng, _ = stage.random(23)
    sampler = SceneSampler()

    def step():
        scenes, x = render_batch(sampler, rng, batch)
        ids = tok([caption(s, rng) for s in scenes], padding=True, return_tensors="pt").to(dev)
        out = clip(input_ids=ids.input_ids, attention_mask=ids.attention_mask, pixel_values=x.to(dev),
                   return_loss=True)
        return optimizer_step(opt, out.loss)

    run_timed("clip", minutes, stage.progress, step, stage.save, log)
    stage.progress["retrieval_top1"] = retrieval_accuracy(clip, tok)
    log(f"clip retrieval top-1 {stage.progress['retrieval_top1']:.3f}")
    return stage.save()
