"""`sdlab info [MODEL | FILE]`: what a model is, its size and settings; or what a LoRA,
textual-inversion or VAE file holds."""

from __future__ import annotations

import json


# this module's commands and their lines in `sdlab --help`
HELP = {"info": "describe a model (default: the shipped model), a LoRA, embedding or VAE"}


def register(sub) -> None:
    p = sub.add_parser("info", help=HELP["info"])
    p.add_argument("model", nargs="?", default=None,
                   help="diffusers folder or single-file checkpoint; or a LoRA / embedding / VAE file or VAE folder")
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


def _values(counts: dict) -> str:
    return ", ".join(f"{k:g}" if isinstance(k, float) else str(k) for k in counts)


def _readable(d: dict) -> dict:
    """A LoRA's or embedding's description as one line per component or token."""
    if d.get("kind") == "LoRA":
        out = {"file": d["file"], "kind": f"LoRA ({d['format']} layout)", "hash": d["hash"]}
        for comp, c in d["components"].items():
            out[comp] = (f"{c['layers']} layers ({c['conv']} conv), {c['parameters']:,} parameters, "
                         f"rank {_values(c['ranks'])}, alpha {_values(c['alphas'])}")
            out[f"{comp} targets"] = ", ".join(f"{k} x{n}" for k, n in c["targets"].items())
        return out
    if "tokens" in d:
        out = {"file": d["file"], "kind": d["kind"], "hash": d["hash"]}
        for name, t in d["tokens"].items():
            out[name] = f"{t['vectors']} vector(s) of {t['dim']}, norms {', '.join(map(str, t['norms']))}"
        return out
    return d


def describe_file(path: str) -> dict | None:
    """A LoRA or embedding file's description; None for anything else (a checkpoint)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file() or p.suffix not in (".safetensors", ".pt", ".bin"):
        return None
    from ..models.loader import diffusers_folder_of

    if diffusers_folder_of(p) is not None:
        return None                         # a component of a diffusers folder: the loader says so
    from ..text.embeddings import holds_model_weights

    if p.suffix == ".safetensors":
        from ..io.tensor_files import safetensors_keys
        from ..models.file_kinds import lora_like_key, unrecognised_file
        from ..models.lora import looks_like_lora

        keys = safetensors_keys(p)
        if looks_like_lora(keys):
            from ..models.lora_info import describe_lora

            return describe_lora(p)
        if key := lora_like_key(keys):      # LoRA-like names in no layout sdlab reads
            raise unrecognised_file(p, key)
        if holds_model_weights(keys):       # a model checkpoint, not an embedding
            return None
    elif p.suffix == ".pt":                 # A1111 embeddings and some model checkpoints share it
        from ..models.checkpoint import load_pickled

        data = load_pickled(p)
        if isinstance(data, dict) and ("state_dict" in data or holds_model_weights(data)):
            return None
    from ..models.hashing import short_hash
    from ..text.embeddings import read_embedding

    tokens = {name: {"vectors": v.shape[0], "dim": v.shape[1], "norms": [round(float(n), 3) for n in v.norm(dim=1)]}
              for name, v in read_embedding(p).items()}
    return {"file": str(p), "kind": "textual-inversion embedding", "hash": short_hash(p), "tokens": tokens}


def run(args) -> int:
    from ..pipeline import Pipeline

    from ..models.vae_file import describe_vae

    d = (args.model and (describe_vae(args.model) or describe_file(args.model))) or describe(Pipeline.load(args.model))
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for key, value in _readable(d).items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:>17}: {value}")
    return 0
