"""`sdlab info [MODEL]`: what a model is, its size and settings."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model (default: the shipped model)")
    p.add_argument("model", nargs="?", default=None, help="diffusers folder or single-file checkpoint")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def describe(pipe) -> dict:
    c = pipe.c
    count = lambda m: sum(p.numel() for p in m.parameters())
    return {
        "name": c.name, "source": str(c.source), "family": c.family, "model_hash": c.model_hash,
        "prediction_type": c.prediction_type, "native_size": pipe.native_size,
        "latent_channels": c.unet.config.in_channels, "vae_downsampling": pipe.vae_scale,
        "parameters": {"unet": count(c.unet), "vae": count(c.vae), "text_encoder": count(c.text_encoder)},
        "text_tokens": c.tokenizer.model_max_length, "vocab_size": len(c.tokenizer),
        "scheduler": {k: v for k, v in c.scheduler_config.items() if not k.startswith("_")},
        "device": str(c.device), "dtype": str(c.dtype).replace("torch.", ""),
    }


def run(args) -> int:
    from ..pipeline import Pipeline

    d = describe(Pipeline.load(args.model))
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for key, value in d.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:>17}: {value}")
    return 0
