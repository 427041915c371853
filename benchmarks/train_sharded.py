"""The sharded-training accelerate configs on one GPU: for plain single-process training and each
of docs/accelerate/fsdp_gpu.yaml and deepspeed_zero2.yaml, `sdlab train lora` for STEPS steps
straight, then the same stopped at STEPS/2 and resumed with `--resume latest`: is the resumed run
exact (its LoRA weights and losses equal the straight run's), and what is the peak GPU memory of
the straight run (torch.cuda.max_memory_allocated in the training process)? Random weights of the
SD 1.5 architecture at 512x512 and random images (train_memory.py's), no network. A config that
sdlab refuses or that fails is a row with its error. --results records the table in
benchmarks/RESULTS.md.

    python benchmarks/train_sharded.py                 # CUDA; a few minutes on an H100
    python benchmarks/train_sharded.py --results
    python benchmarks/train_sharded.py --device cpu --model src/sdlab/assets/shapes-sd --size 64 --steps 2
        (the harness on the CPU: the plain run trains, the sharded configs are refused)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("plain", "fsdp_gpu", "deepspeed_zero2")       # plain: one process, no accelerate config


def child(peak_file: str, argv: list[str]) -> int:
    """In the launched training process: `sdlab` with `argv`, then its peak GPU memory to `peak_file`."""
    import torch

    from sdlab.cli.main import main

    code = main(argv)
    if torch.cuda.is_available() and int(os.environ.get("RANK", "0")) == 0:
        Path(peak_file).write_text(json.dumps({"peak_bytes": torch.cuda.max_memory_allocated()}))
    return code


def train(config: str, args, data: Path, out: Path, steps: int, *extra: str) -> tuple[int, str, int | None]:
    """(exit code, last stderr line, peak bytes) of one `sdlab train lora` run under `config`."""
    peak = out.parent / f"{out.name}-{steps}.peak.json"
    file = ROOT / "docs" / "accelerate" / f"{config}.yaml"
    launch = [] if config == "plain" else ["-m", "accelerate.commands.launch", "--config_file", str(file)]
    cmd = [sys.executable, *launch, __file__, "--child", str(peak), "train", "lora", "--model", str(args.model_path),
           "--data", str(data), "--output-dir", str(out), "--max-steps", str(steps), "--batch-size", "1",
           "--rank", "4", "--resolution", str(args.size), "--device", args.device, "--mixed-precision", args.precision,
           "--checkpoint-every", "1000", "--seed", "0", *extra]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), CUBLAS_WORKSPACE_CONFIG=":4096:8")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    lines = [s for s in res.stderr.splitlines() if s.strip()]
    error = next((s for s in lines if s.startswith("sdlab: error:")), lines[-1] if lines else "")
    return res.returncode, error, json.loads(peak.read_text())["peak_bytes"] if peak.is_file() else None


def compare(a: Path, b: Path) -> tuple[float, bool]:
    """(largest weight difference, losses equal) of two finished runs."""
    from safetensors.torch import load_file

    wa, wb = (load_file(str(p / "lora_kohya.safetensors")) for p in (a, b))
    if wa.keys() != wb.keys():
        return float("inf"), False
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    losses = [[r.split(",")[:2] for r in (p / "logs" / "loss.csv").read_text().splitlines()[1:]] for p in (a, b)]
    return diff, losses[0] == losses[1]


def row(config: str, args, data: Path, tmp: Path) -> str:
    half = max(1, args.steps // 2)
    straight, split = tmp / f"{config}-straight", tmp / f"{config}-split"
    runs = [train(config, args, data, straight, args.steps), train(config, args, data, split, half),
            train(config, args, data, split, args.steps, "--resume", "latest")]
    failed = next(((code, err) for code, err, _ in runs if code != 0), None)
    peak = runs[0][2]
    shown = f"{peak / 2**30:.2f} GiB" if peak else "-"
    if failed:
        return f"| {config} | {shown} | - | - | exit {failed[0]}: {failed[1][:240].replace('|', '/')} |"
    diff, same_losses = compare(straight, split)
    exact = "yes" if diff == 0 and same_losses else "NO"
    return f"| {config} | {shown} | {diff:.3g} | {exact} | losses {'equal' if same_losses else 'differ'} |"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="random:sd15", help="random:sd15 (default), random:sd21-base, or a path")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4, help="steps of the straight run; the split run stops at half")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per training run")
    ap.add_argument("--results", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    import torch

    from train_memory import random_model, synthetic_data
    from report import cpu_description, publish

    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_sharded: no CUDA GPU here; --device cpu runs the harness (the sharded configs are refused)",
              file=sys.stderr)
        return 2
    args.precision = "bf16" if args.device == "cuda" else "no"
    spec = args.model
    args.model_path = random_model(spec.split(":", 1)[1]) if spec.startswith("random:") else Path(spec).resolve()
    rows = ["| config | peak (straight run) | max weight diff, resumed vs straight | exact resume | notes |",
            "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = synthetic_data(Path(tmp), args.size)
        for config in args.configs:
            rows.append(row(config, args, data, Path(tmp)))
            print(rows[-1], file=sys.stderr, flush=True)
    hw = torch.cuda.get_device_name() if args.device == "cuda" else cpu_description()
    title = f"sharded training, 1 process · {hw} · {args.model_path.name} · {args.size}x{args.size} · LoRA rank 4"
    note = (f"\n\n{args.steps} steps straight vs {max(1, args.steps // 2)} + resume, batch 1, mixed precision "
            f"{args.precision}; peak: torch.cuda.max_memory_allocated of the straight run's training process.")
    publish(__file__, title, "\n".join(rows) + note, argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
