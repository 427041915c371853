"""Personalization with the defaults: the README's three training commands with no flag but the
data, the prompt and the output folder, on 8 exported hearts, each result read by `sdlab eval`
(the oracle; --n samples per prompt; drift against the base model). DreamBooth and LoRA also run
the other way round as to prior preservation (--class-prompt), to show what the prior does to drift.

    python benchmarks/personalize_defaults.py --out runs/defaults            # the measurement
    python benchmarks/personalize_defaults.py --out /tmp/pd --n 2 --only lora --train-flag=--max-steps=2   # smoke

Columns: minutes of training; "a TOKEN" read as a heart; "a red TOKEN" read red, and read as a
red heart; drift = the fall of the base model's class-prompt accuracy ("a red circle", ...).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from report import publish
from sdlab.evaluate.apply import checkpoints_of

# method label -> (how prompts name the concept, the command's arguments after --data/--output-dir)
RUNS = {
    "lora": ("sks shape", ["lora", "--instance-prompt", "a sks shape"]),
    "lora, with prior": ("sks shape", ["lora", "--instance-prompt", "a sks shape", "--class-prompt", "a shape"]),
    "dreambooth": ("sks shape", ["dreambooth", "--instance-prompt", "a sks shape", "--class-prompt", "a shape"]),
    "dreambooth, no prior": ("sks shape", ["dreambooth", "--instance-prompt", "a sks shape", "--no-prior-preservation"]),
    "textual-inversion": ("<sks>", ["textual-inversion", "--placeholder", "<sks>"]),
}
TARGETS = {"detection": 0.80, "color": 0.80, "color+concept": 0.70}
TITLE = "Personalization with the defaults"


def sdlab(*argv: str) -> None:
    """Run one sdlab command as a user would (its own process), failing loudly."""
    subprocess.run([sys.executable, "-m", "sdlab", *argv], check=True)


def last_checkpoint(run_dir: Path) -> Path:
    """The run's final checkpoint: the weights its output files hold."""
    found = checkpoints_of(run_dir)
    if not found:
        raise SystemExit(f"no checkpoint in {run_dir / 'checkpoints'}")
    return found[-1]


def run_one(label: str, args, data: Path) -> dict:
    token, command = RUNS[label]
    out = args.out / label.replace(", ", "-").replace(" ", "-")
    start = time.perf_counter()
    sdlab("train", *command, "--data", str(data), "--output-dir", str(out), *args.train_flag)
    minutes = (time.perf_counter() - start) / 60
    report = out / "eval-defaults"
    sdlab("eval", "--artifact", str(last_checkpoint(out)), "--token", token, "--concept", "shape=heart",
          "--n", str(args.n), "--drift", "--no-clip", "--out", str(report))
    metrics = json.loads((report / "report.json").read_text())[-1]
    return {**metrics, "label": label, "minutes": minutes}


def table(rows: list[dict], n: int) -> str:
    lines = ["| method (defaults) | minutes | 'a TOKEN' heart | 'a red TOKEN' red | red heart | drift |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        drift = r.get("drift_accuracy_drop", float("nan"))
        lines.append(f"| {r['label']} | {r['minutes']:.1f} | {r['detection']:.2f} | {r['color']:.2f} | "
                     f"{r['color+concept']:.2f} | {drift:.2f} |")
    lines += ["", f"{n} samples per prompt; targets: heart >= {TARGETS['detection']:.2f}, red >= "
              f"{TARGETS['color']:.2f}, red heart >= {TARGETS['color+concept']:.2f}."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="a new folder for the data, runs and reports")
    p.add_argument("--n", type=int, default=64, help="samples per prompt (default 64)")
    p.add_argument("--only", action="append", choices=list(RUNS), help="run only this method (repeatable)")
    p.add_argument("--train-flag", action="append", default=[],
                   help="extra training flag, for smoke runs only (the measurement uses none)")
    p.add_argument("--results", action="store_true", help="record the table in benchmarks/RESULTS.md")
    args = p.parse_args()
    data = args.out / "hearts"
    sdlab("world", "export", str(data), "--concept", "heart", "--n", "8")
    rows = [run_one(label, args, data) for label in (args.only or RUNS)]
    publish(__file__, TITLE, table(rows, args.n), record=args.results and not args.train_flag)


if __name__ == "__main__":
    main()
