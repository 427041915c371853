"""A model card (`README.md`) beside a run's results, as diffusers' training scripts write one:
what was trained from what and how, the files with their hashes, and how to use them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..io.atomic import atomic_write_text
from ..models.hashing import sha256_file
from .logs import validation_losses

WHAT = {"pytorch_lora_weights.safetensors": "LoRA, diffusers / peft layout",
        "lora_kohya.safetensors": "LoRA, kohya / AUTOMATIC1111 layout",
        "lcm_lora.safetensors": "LCM-LoRA, diffusers / peft layout",
        "learned_embeds.safetensors": "embedding, diffusers layout",
        "model": "diffusers model folder", "vae": "diffusers AutoencoderKL folder"}


def _what(path: Path) -> str:
    if path.name in WHAT:
        return WHAT[path.name]
    return "embedding, AUTOMATIC1111 layout" if path.suffix == ".safetensors" else "folder"


def _changed_options(opts) -> dict:
    """The method options that differ from their defaults."""
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)
            if f.default is dataclasses.MISSING or getattr(opts, f.name) != f.default}


def trained_prompt(config, token: str | None = None) -> str:
    """The prompt a card's usage line shows: the run's instance prompt, else "a TOKEN"."""
    return config.instance_prompt or (f"a {token}" if token else "a large red circle")


def model_usage(config, options, saved: dict, out: Path) -> list[str]:
    """The usage line of a run that saves a model folder (OUT/model), with a tuned VAE beside it."""
    vae = f" --vae {out / 'vae'}" if (out / "vae").is_dir() else ""
    return [f'sdlab generate "{trained_prompt(config)}" --model {saved["model"]}{vae}']


def card_path(out: Path) -> Path:
    """OUT/README.md, unless a README.md that sdlab did not write is there: then MODEL_CARD.md."""
    readme = out / "README.md"
    if readme.is_file() and "library_name: sdlab" not in readme.read_text(encoding="utf-8", errors="replace"):
        return out / "MODEL_CARD.md"
    return readme


def write_model_card(out: Path, config, method, saved: list[Path], losses: list[float]) -> Path:
    """The model card of a finished run (`card_path`: a user's own README.md is never overwritten)."""
    from .methods.registry import get

    opts = method.options
    base = config.model or "the shipped shapes-world model"
    front = ["---", f"base_model: {base}", "library_name: sdlab", "tags: [stable-diffusion, text-to-image, sdlab, "
             f"{method.name}]"] + ([f"instance_prompt: {config.instance_prompt}"] if config.instance_prompt else []) \
        + ["---", ""]
    settings = (f"{len(losses)} steps this session, {config.max_steps} in all; batch {config.batch_size} x "
                f"{config.grad_accum} accumulation; learning rate {config.learning_rate:g} ({config.lr_scheduler}); "
                f"mixed precision {config.mixed_precision}; seed {config.seed}")
    lines = front + [f"# {method.name} on {Path(config.data_dir).name}", "",
                     f"Trained with `sdlab train {method.name}` from `{base}`: {settings}.", ""]
    changed = _changed_options(opts) if opts is not None else {}
    if changed:
        lines += ["Method options (besides the defaults): " + ", ".join(f"{k}={v}" for k, v in changed.items()) +
                  ".", ""]
    lines += ["## Files", "", "| file | what | sha256 |", "|---|---|---|"]
    for path in saved:
        kind = _what(path)
        digest = sha256_file(path)[:12] if path.is_file() else "-"
        lines.append(f"| `{path.relative_to(out)}` | {kind} | {digest} |")
    spec = get(method.name)
    usage = spec.usage(config, opts, {p.name: p for p in saved}, out) if spec.usage else []
    if usage:
        lines += ["", "## Use", "", "```bash"] + usage + ["```"]
    tail = losses[-50:]
    lines += ["", "## Training", ""]
    if tail:
        lines.append(f"Mean loss over the last {len(tail)} steps: {sum(tail) / len(tail):.4f}.")
    val = validation_losses(out)
    if val:
        step = max(val)
        lines.append(f"Validation loss at step {step}: {val[step]:.4f} (first measured: {val[min(val)]:.4f}).")
    if (out / "logs" / "loss.png").is_file():
        lines += ["", "![loss](logs/loss.png)"]
    samples = sorted((out / "samples").glob("step-*.png")) if (out / "samples").is_dir() else []
    if samples:
        lines += ["", f"![samples at the last validation]({samples[-1].relative_to(out).as_posix()})"]
    return atomic_write_text(card_path(out), "\n".join(lines) + "\n")
