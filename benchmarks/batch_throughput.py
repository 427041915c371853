"""Batch generation throughput on Ray Data: `sdlab batch`'s run_batch over the same prompts with
1 and 2 model actors on a local Ray, rows per second (steady state: from the first finished
batch to the last, so model loading is left out; and wall time including it), and the scaling
ratio 2 workers / 1. Prints a Markdown table; --results records it in benchmarks/RESULTS.md, in
place of this script's section with the same title.

    python benchmarks/batch_throughput.py                        # shipped model, 64 rows, 10 steps
    python benchmarks/batch_throughput.py --rows 128 --steps 20 --results
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from report import cpu_description, publish
from sdlab.batch import BatchOptions, ModelSpec, run_batch
from sdlab.config import GenerationConfig


def measure(prompts: Path, out: Path, args, workers: int) -> dict:
    """One run: steady rows/s (after the first finished batch), wall rows/s, rows."""
    stamps = []

    def progress(records):
        stamps.append((time.perf_counter(), len(records)))

    start = time.perf_counter()
    summary = run_batch(prompts, out, GenerationConfig("", steps=args.steps), ModelSpec(model=args.model),
                        BatchOptions(workers=workers, batch_size=args.batch_size), progress=progress)
    wall = time.perf_counter() - start
    assert summary.failed == 0, summary.errors
    first = stamps[0][0]
    rows_after = sum(n for _, n in stamps[1:])
    steady = rows_after / (stamps[-1][0] - first) if len(stamps) > 1 and stamps[-1][0] > first else float("nan")
    return {"workers": workers, "rows": summary.ok, "steady": steady, "wall": summary.ok / wall, "seconds": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=4, help="rows per task")
    ap.add_argument("--results", action="store_true",
                    help="record the table in benchmarks/RESULTS.md (replaces this script's section of the same title)")
    args = ap.parse_args(argv)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prompts = Path(tmp) / "prompts.txt"
            prompts.write_text("".join(f"a shape number {i}\n" for i in range(args.rows)))
            runs = [measure(prompts, Path(tmp) / f"out{w}", args, w) for w in (1, 2)]
    finally:
        ray.shutdown()
    rows = ["| workers | rows | rows/s (steady) | rows/s (wall, with model loading) | seconds |", "|---|---|---|---|---|"]
    rows += [f"| {r['workers']} | {r['rows']} | {r['steady']:.2f} | {r['wall']:.2f} | {r['seconds']:.1f} |" for r in runs]
    ratio = runs[1]["steady"] / runs[0]["steady"]
    title = (f"batch throughput on Ray Data · {cpu_description()} · {Path(args.model).name if args.model else 'shapes-sd'}"
             f" · {args.steps} steps · {args.batch_size} rows per task")
    note = (f"\n\nscaling 2 workers / 1 (steady): {ratio:.2f}x. One CPU per actor, torch on one thread each; "
            "a local Ray (ray.init(num_cpus=2)).")
    publish(__file__, title, "\n".join(rows) + note, argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
