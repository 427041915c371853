"""A fast first image: where a fresh `sdlab generate` spends its time, and what `--help` costs.

Each measurement runs in a fresh subprocess (nothing cached in the interpreter), as a user
runs the command. Absolute seconds are noisy on a shared machine, so every number also comes
as a ratio of a bare `python -c "import torch"` measured in the same run (median of --repeats).

- help: wall time of `sdlab --help` and of every `sdlab COMMAND --help` (median), and whether
  it imported torch, diffusers or transformers (`python -X importtime`).
- phases of `sdlab generate PROMPT --steps N` on the shipped model: start-up and imports until
  the model loads, model load, text encoding, sampling (the loop), VAE decode, PNG writing, the
  time between them and the interpreter's exit, from wrappers put around Pipeline.load/encode_prompt/decode/generate and
  sdlab.io.outputs.save_result in the child; "of which imports" is the time the child spent in
  first imports during that phase (`-X importtime`).
- --server: the same command sent with `--server URL` to a running `sdlab serve` (the model
  already loaded there), for the time to an image through the persistent worker.

    python benchmarks/first_image.py --results
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import publish

HEAVY = ("torch", "diffusers", "transformers")
PROMPT = "a red circle"
# run in the child before sdlab is imported: time the phases of Pipeline and save_result
CHILD = r"""
import importlib.abc, sys, time
PH = {}
def add(name, dt): PH[name] = PH.get(name, 0.0) + dt
def timed(name, fn, first=None):
    def wrapper(*a, **k):
        if first and first not in PH: print(f"@@MARK {first} {time.time():.6f}", file=sys.stderr, flush=True)
        print(f"@@BEGIN {name}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try: return fn(*a, **k)
        finally:
            add(name, time.perf_counter() - t)
            print(f"@@END {name}", file=sys.stderr, flush=True)
    return wrapper
def patch(mod):
    if mod.__name__ == "sdlab.pipeline":
        P = mod.Pipeline
        load = P.load.__func__
        P.load = classmethod(timed("load", load, first="load_start"))
        P.apply_speed = timed("load", P.apply_speed)
        for name, attr in (("encode", "encode_prompt"), ("decode", "decode"), ("generate", "generate")):
            setattr(P, attr, timed(name, getattr(P, attr)))
    elif mod.__name__ == "sdlab.io.outputs":
        mod.save_result = timed("save", mod.save_result)
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in ("sdlab.pipeline", "sdlab.io.outputs"): return None
        sys.meta_path.remove(self)
        try: spec = importlib.util.find_spec(name)
        finally: sys.meta_path.insert(0, self)
        run = spec.loader.exec_module
        def exec_module(module): run(module); patch(module)
        spec.loader.exec_module = exec_module
        return spec
import importlib.util
sys.meta_path.insert(0, Hook())
sys.argv = ["sdlab"] + sys.argv[1:]
from sdlab.cli.main import main
rc = main()
import json; print("@@PHASES " + json.dumps(PH), file=sys.stderr, flush=True)
print(f"@@MARK done {time.time():.6f}", file=sys.stderr, flush=True)
sys.exit(rc)
"""


def wall(cmd: list[str], env=None, cwd=None) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds a fresh `cmd` takes, and its result (a failure stops the benchmark)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return dt, proc


def import_events(stderr: str) -> list[tuple[str, int, float]]:
    """(name, depth, cumulative seconds) of each `-X importtime` line, in order."""
    out = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            out.append((m.group(3), (len(m.group(2)) - 1) // 2, int(m.group(1)) / 1e6))
    return out


def heavy_imported(stderr: str) -> list[str]:
    """Which of torch, diffusers, transformers a `-X importtime` run imported."""
    names = {name.split(".")[0] for name, _, _ in import_events(stderr)}
    return [h for h in HEAVY if h in names]


def bare_torch(repeats: int) -> float:
    return statistics.median(wall([sys.executable, "-c", "import torch"])[0] for _ in range(repeats))


def commands() -> list[list[str]]:
    """[], then every subcommand (and `train` with its first method) of the current parser."""
    from sdlab.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    out = [[]] + [[name] for name in sub.choices]
    train = next(a for a in sub.choices["train"]._actions if a.__class__.__name__ == "_SubParsersAction")
    return out + [["train", next(iter(train.choices))]]


def help_rows(repeats: int, torch_s: float) -> list[str]:
    rows = ["| command | s (median) | x import torch | imports torch / diffusers / transformers |",
            "|---|---|---|---|"]
    for cmd in commands():
        argv = [sys.executable, "-m", "sdlab", *cmd, "--help"]
        s = statistics.median(wall(argv)[0] for _ in range(repeats))
        heavy = heavy_imported(wall([sys.executable, "-X", "importtime", *argv[1:]])[1].stderr)
        label = " ".join(["sdlab", *cmd, "--help"])
        rows.append(f"| `{label}` | {s:.2f} | {s / torch_s:.2f} | {', '.join(heavy) or 'none'} |")
        print(rows[-1], file=sys.stderr)
    return rows


def phases_of(stderr: str, started: float, total: float) -> dict[str, tuple[float, float]]:
    """{phase: (seconds, seconds of first imports in it)} from a profiled child's stderr."""
    marks = dict((m.group(1), float(m.group(2))) for m in re.finditer(r"@@MARK (\S+) ([\d.]+)", stderr))
    ph = json.loads(re.search(r"@@PHASES (.*)", stderr).group(1))
    imports = {k: 0.0 for k in ("start", "load", "encode", "generate", "decode", "save", "other")}
    stack, outside = [], "start"          # imports outside the wrapped calls: before the load, or "other"
    # markers may share a line with a progress bar's \r output: find them anywhere, in order
    for m in re.finditer(r"@@(BEGIN|END) (\w+)|^import time:\s+\d+ \|\s+(\d+) \| \S", stderr, re.M):
        if m.group(1) == "BEGIN":
            stack.append(m.group(2))
            outside = "other"
        elif m.group(1) == "END":
            stack.pop()
        else:                               # a top-level import event
            imports[stack[-1] if stack else outside] += int(m.group(3)) / 1e6
    start = marks["load_start"] - started
    sampling = ph["generate"] - ph.get("encode", 0.0) - ph.get("decode", 0.0)
    rows = {"start-up and imports": (start, imports["start"]), "model load": (ph["load"], imports["load"]),
            "text encoding": (ph.get("encode", 0.0), imports["encode"]),
            "sampling": (sampling, imports["generate"]), "VAE decode": (ph.get("decode", 0.0), imports["decode"]),
            "PNG writing": (ph["save"], imports["save"])}
    exit_s = started + total - marks["done"]             # main() returned: interpreter shutdown
    rows["between the phases"] = (total - exit_s - sum(v[0] for v in rows.values()), imports["other"])
    rows["interpreter exit"] = (exit_s, 0.0)
    return rows


def profile_generate(steps: int, extra: list[str]) -> tuple[float, dict]:
    """Wall seconds and phases of one fresh `sdlab generate PROMPT --steps N` (a new folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-X", "importtime", "-c", CHILD, "generate", PROMPT, "--steps", str(steps),
                "--seed", "1", "--out", str(Path(tmp) / "out"), *extra]
        started = time.time()
        total, proc = wall(argv)
    return total, phases_of(proc.stderr, started, total)


def phase_rows(steps: int, repeats: int, torch_s: float, extra: list[str]) -> list[str]:
    runs = [profile_generate(steps, extra) for _ in range(repeats)]
    mid = sorted(runs, key=lambda r: r[0])[len(runs) // 2]         # the median run, whole
    rows = ["| phase | s | x import torch | of which first imports (s) |", "|---|---|---|---|"]
    for name, (s, imp) in mid[1].items():
        rows.append(f"| {name} | {s:.2f} | {s / torch_s:.2f} | {imp:.2f} |")
    rows.append(f"| **total (fresh process)** | **{mid[0]:.2f}** | **{mid[0] / torch_s:.2f}** | "
                f"{sum(v[1] for v in mid[1].values()):.2f} |")
    return rows


def server_rows(steps: int, repeats: int, torch_s: float) -> list[str]:
    """Time to an image with `sdlab generate --server URL` against a running `sdlab serve`."""
    from server_load import free_port, start_server, wait_healthy

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        proc = start_server(port, Path(tmp) / "srv", None, 10, log)
        try:
            wait_healthy(f"http://127.0.0.1:{port}", proc)
            times = []
            for i in range(repeats):
                argv = [sys.executable, "-m", "sdlab", "generate", PROMPT, "--steps", str(steps), "--seed", "1",
                        "--server", f"http://127.0.0.1:{port}", "--out", str(Path(tmp) / f"out{i}")]
                times.append(wall(argv)[0])
        finally:
            proc.terminate()
            proc.wait(30)
    s = statistics.median(times)
    return [f"| **through `sdlab serve` (--server URL)** | **{s:.2f}** | **{s / torch_s:.2f}** | |"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each --help and of import torch (median shown)")
    ap.add_argument("--runs", type=int, default=3, help="fresh generate runs profiled (the median run is shown)")
    ap.add_argument("--no-help", action="store_true", help="skip the --help timings")
    ap.add_argument("--no-phases", action="store_true", help="skip the generate profile")
    ap.add_argument("--server", action="store_true", help="also time generate --server against sdlab serve")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `sdlab generate` options")
    ap.add_argument("--results", action="store_true", help="write the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    torch_s = bare_torch(args.repeats)
    parts = [f"bare `python -c \"import torch\"`: {torch_s:.2f} s (median of {args.repeats})"]
    if not args.no_phases:
        rows = phase_rows(args.steps, args.runs, torch_s, args.extra)
        if args.server:
            rows += server_rows(args.steps, args.runs, torch_s)
        parts.append("\n".join(rows))
    if not args.no_help:
        parts.append("\n".join(help_rows(args.repeats, torch_s)))
    import platform

    title = (f"First image · {platform.machine()} CPU, {os.environ['OMP_NUM_THREADS']} threads · shapes-sd · "
             f"fresh `sdlab generate \"{PROMPT}\" --steps {args.steps}`")
    publish(__file__, title, "\n\n".join(parts), argv, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
