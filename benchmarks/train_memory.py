"""Training memory at real scale: peak GPU memory and steps/s of a training step for textual
inversion, LoRA (rank 4, UNet attention) and DreamBooth (full UNet) on random weights of the
SD 1.5 architecture at 512x512, against the targets (TI < 6 GiB, LoRA < 8 GiB, DreamBooth
< 12 GiB with 8-bit Adam, gradient checkpointing and fp16). Synthetic data (random images and
metadata.jsonl in a temp folder); no network. Prints a Markdown table; --results records it
in benchmarks/RESULTS.md, in place of this script's section with the same title.

    python benchmarks/train_memory.py                             # CUDA, random:sd15, 512x512
    python benchmarks/train_memory.py --results
    python benchmarks/train_memory.py --device cpu --size 64 --model src/sdlab/assets/shapes-sd --steps 1

On the CPU the peak column is the saved-tensor accounting (sdlab.training.memory.account_step:
weights, gradients, optimizer state and the tensors autograd saves for backward), not GPU
memory; fp16 is accounted as bf16 (same bytes) and 8-bit Adam by its state size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from report import cpu_description, publish
from sdlab.training import memory
from sdlab.training.methods import registry

TARGET_GIB = {"textual-inversion": 6, "lora": 8, "dreambooth": 12}


def method_options(method: str, prior: bool, cls: Path) -> dict:
    """Each method's options here; LoRA keeps the prior preservation its class prompt turned on."""
    classes = dict(class_prompt="a shape", class_data_dir=str(cls), num_class_images=4)
    return {"textual-inversion": dict(placeholder="<bench-x>"), "lora": dict(rank=4, prior_preservation=True, **classes),
            "dreambooth": dict(prior_preservation=prior, **classes)}[method]


@dataclass(frozen=True)
class Run:
    method: str
    options: dict          # TrainingConfig memory fields


def runs(device: str, methods) -> list[Run]:
    """Per method: mixed precision + SDPA, then + gradient checkpointing; DreamBooth as its
    target says (fp16, gradient checkpointing, 8-bit Adam)."""
    mp = "fp16" if device == "cuda" else "bf16"
    fast = {"mixed_precision": mp, "attention": "sdpa"}
    out = []
    for m in methods:
        if m == "dreambooth":
            out.append(Run(m, {**fast, "gradient_checkpointing": True, "use_8bit_adam": True}))
        else:
            out += [Run(m, fast), Run(m, {**fast, "gradient_checkpointing": True})]
    return out


def random_model(name: str) -> Path:
    """random:ARCH: random fp16 weights of that architecture, cached in the temp folder."""
    from sdlab.models.random_model import build_random_model

    folder = Path(tempfile.gettempdir()) / f"sdlab-random-{name}"
    if not (folder / "model_index.json").is_file():
        build_random_model(name, folder)
    return folder


def synthetic_data(root: Path, size: int, n: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """(instance folder with metadata.jsonl, class-image folder) of random RGB images."""
    rng = np.random.default_rng(seed)
    data, cls = root / "data", root / "class_images"
    data.mkdir(parents=True, exist_ok=True)
    cls.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(data / f"{i:04d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(cls / f"class-{i:05d}.png")
        lines.append(json.dumps({"file_name": f"{i:04d}.png", "text": "a photo of a sks shape"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return data, cls


def config(run: Run, args, data: Path, cls: Path, out: Path):
    spec = registry.get(run.method)
    options = spec.options(**method_options(run.method, args.prior, cls))
    cfg = spec.config(options, data_dir=str(data), output_dir=str(out), model=str(args.model_path),
                      resolution=args.size, batch_size=args.batch, device=args.device, **run.options)
    return cfg, spec.build(options)


def row(run: Run, cfg, method, args) -> str:
    notes = []
    if cfg.use_8bit_adam and args.device == "cuda" and not memory._bnb_available():
        cfg = memory.apply_overrides(cfg, {"use_8bit_adam": False})
        notes.append("bitsandbytes missing: fp32 AdamW")
    est = memory.estimate_step(cfg, method)
    r = memory.measure_run(cfg, method, steps=args.steps)
    gpu_512 = args.device == "cuda" and args.size == 512 and args.batch == 1
    target = TARGET_GIB.get(run.method)
    verdict = ("pass" if r.peak_bytes < target * memory.GIB else "FAIL") if gpu_512 and target else "n/a"
    load = memory.gib(r.load_peak_bytes) if r.load_peak_bytes else "-"
    rate = f"{r.steps_per_s:.2f}" if r.steps_per_s else "-"
    trainable = est.breakdown.trainable_params
    return (f"| {run.method} | {memory.describe(cfg)} | {memory.gib(r.peak_bytes)} | "
            f"< {target} GiB | {verdict} | {rate} | {load} | {memory.gib(est.peak_bytes)} | "
            f"{trainable / 1e6:.2f} M | {'; '.join(notes)} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:sd15", help="random:sd15 (default), random:sd21-base, or a path")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="training steps per run (CUDA: at least 2)")
    ap.add_argument("--methods", nargs="+", default=list(TARGET_GIB), choices=list(TARGET_GIB))
    ap.add_argument("--prior", action="store_true", help="DreamBooth with prior preservation (doubles the batch)")
    ap.add_argument("--results", action="store_true",
                    help="record the table in benchmarks/RESULTS.md (replaces this script's section of the same title)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_memory: no CUDA GPU here; use --device cpu for the accounting smoke run", file=sys.stderr)
        return 2
    spec = args.model
    args.model_path = random_model(spec.split(":", 1)[1]) if spec.startswith("random:") else Path(spec)
    rows = ["| method | options | peak | target | pass | steps/s | load peak | estimate | trained | notes |",
            "|---" * 10 + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        data, cls = synthetic_data(Path(tmp), args.size)
        for i, run in enumerate(runs(args.device, args.methods)):
            cfg, method = config(run, args, data, cls, Path(tmp) / f"run{i}")
            rows.append(row(run, cfg, method, args))
            print(rows[-1], file=sys.stderr, flush=True)
    if args.device == "cuda":
        hw, peak = torch.cuda.get_device_name(), "peak: torch.cuda.max_memory_allocated over the training steps"
    else:
        hw = cpu_description()
        peak = ("peak: CPU accounting (weights + gradients + optimizer state + saved-for-backward tensors), "
                "NOT GPU memory; fp16 accounted as bf16; targets apply to CUDA at 512x512")
    title = (f"training memory · {hw} · {args.model_path.name} · {args.size}x{args.size} · batch {args.batch}"
             f"{' · DreamBooth with prior preservation' if args.prior else ''}")
    note = (f"\n\n{peak}. estimate: the analytic model of sdlab.training.memory.estimate_step. "
            "load peak: while loading (fp32) and setting up, before the steps.")
    publish(__file__, title, "\n".join(rows) + note, argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
