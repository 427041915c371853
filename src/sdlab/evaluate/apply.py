"""Put what a run learned into a Pipeline: a final artifact or any training checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..models import lora as lora_files
from ..text import embeddings
from ..training import checkpoints as ck

EMBEDDING_WEIGHT = "embeddings.token_embedding.weight"          # under text_model. in older transformers


def load_artifact(model, artifact: str | Path | None, scale: float = 1.0, device: str = "cpu", vae=None):
    """A Pipeline of `model` with `artifact` (an embedding file, a LoRA file, a tuned VAE
    folder, or a tuned model folder, which replaces `model`) applied; `vae`: a VAE folder or
    file to sample through (a checkpoint's own tuned decoder still wins)."""
    from ..pipeline import Pipeline

    if artifact is None:
        return Pipeline.load(model, device=device, vae=vae)
    path = Path(artifact)
    if path.is_dir() and (path / "model_index.json").is_file():
        return Pipeline.load(path, device=device, vae=vae)
    if path.is_dir() and (path / "config.json").is_file():
        if vae is not None:
            raise ConfigError(f"'{artifact}' is a VAE itself: give it as --artifact or as --vae, not both")
        return Pipeline.load(model, device=device, vae=path)
    if path.is_dir() and (path / "state.json").is_file():
        return load_checkpoint(model, path, device, vae)
    pipe = Pipeline.load(model, device=device, vae=vae)
    if lora_files.is_lora_file(path, "LoRA file"):
        lora_files.apply_lora(pipe, path, scale)
    else:
        embeddings.load_embedding(pipe, path)
    return pipe


def load_checkpoint(model, ckpt: str | Path, device: str = "cpu", vae=None):
    """A Pipeline of `model` (through `vae` when given) with a training checkpoint's weights
    (EMA ones when present)."""
    from ..pipeline import Pipeline

    _, state = ck.load_checkpoint(Path(ckpt))
    method, opts, weights = state["method"], state.get("options") or {}, dict(state["trainable"])
    pipe = Pipeline.load(model, device=device, vae=vae)
    if method == "textual-inversion":
        vectors = weights["learned_embeds"]
        embeddings.add_tokens(pipe.c.tokenizer, pipe.c.text_encoder,
                              embeddings.token_names(opts["placeholder"], len(vectors)), vectors)
        return pipe
    if "ema" in state:                        # EMA shadow params follow the trainable order
        for key, shadow in zip(list(weights), state["ema"]["shadow_params"]):
            weights[key] = shadow
    if method == "lora":
        if opts.get("new_token"):                  # pivotal tuning: the new rows end the embedding matrix
            table = weights.pop(next(k for k in weights if k.startswith("text_encoder.") and
                                     k.endswith(EMBEDDING_WEIGHT)))
            n = opts.get("new_token_vectors") or 1
            embeddings.add_tokens(pipe.c.tokenizer, pipe.c.text_encoder,
                                  embeddings.token_names(opts["new_token"], n), table[-n:])
        alpha = opts.get("alpha") or opts.get("rank")
        meta = {lora_files.METADATA_KEY: json.dumps({f"{c}.lora_alpha": alpha for c in lora_files.PREFIXES})}
        modules = lora_files.model_modules(pipe.c.unet, pipe.c.text_encoder)
        layers = lora_files.parse(weights, meta, lora_files.kohya_names(modules))
        lora_files.check_shapes(layers, modules)
        lora_files.AppliedLora(modules, layers, 1.0)
        return pipe
    if method in ("dreambooth", "finetune", "vae-decoder"):
        for comp in ("unet", "text_encoder", "vae"):
            sub = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(comp + ".")}
            if sub:
                missing = getattr(pipe.c, comp).load_state_dict(sub, strict=False)
                if missing.unexpected_keys:
                    raise ConfigError(f"checkpoint '{ckpt}' does not fit the model: {missing.unexpected_keys[:3]}")
        return pipe
    raise ConfigError(f"checkpoint '{ckpt}' is from an unknown method {method!r}")


def checkpoints_of(run_dir: str | Path) -> list[Path]:
    found = ck.list_checkpoints(Path(run_dir) / "checkpoints")
    if not found:
        raise ConfigError(f"no checkpoints under '{run_dir}/checkpoints'")
    return found
