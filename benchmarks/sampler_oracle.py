"""Every sampler's oracle all-right rate next to Euler's, at several step counts, on the shipped model.

    python benchmarks/sampler_oracle.py [--n 16] [--steps 10,20,25] [--cfg-scale 7.5] [--sampler "DPM++ 3M SDE" ...]
                                        [--model DIR] [--out r.json | --results]

The prompts and seeds of tests/test_samplers_reference.py ("seen" prompts, seeds 1000 + i); the target
there is a rate within 0.10 of Euler's at the same steps. Prints a table (rate per steps, the gap below
Euler's, the worst gap) and the JSON report; `--results` writes it to benchmarks/results/sampler_oracle.json.
"""

from __future__ import annotations

import argparse

from report import result_file
from sdlab.config import GenerationConfig
from sdlab.evaluate import emit_report
from sdlab.pipeline import Pipeline
from sdlab.sampling import sampler_names
from sdlab.world.captions import full_caption
from sdlab.world.metrics import accuracy
from sdlab.world.prompt_sets import prompt_set

SEED = 1000
TARGET = 0.10   # the issue's: within this of Euler's rate


def rates(pipe, scenes, cond, names, steps_list, cfg_scale: float | None = None) -> dict[str, dict[int, float]]:
    out = {}
    for name in names:
        out[name] = {}
        for steps in steps_list:
            scale = {} if cfg_scale is None else {"cfg_scale": cfg_scale}
            config = GenerationConfig("", sampler=name, steps=steps, seed=SEED, batch_size=len(scenes), **scale)
            out[name][steps] = accuracy(scenes, pipe.generate(config, cond=cond).images)["all"]
            print(f"{name:22s} {steps:3d} steps: {out[name][steps]:.3f}", flush=True)
    return out


def table(result: dict[str, dict[int, float]], steps_list) -> str:
    head = "| sampler | " + " | ".join(f"{s} steps" for s in steps_list) + " | worst gap |"
    lines = [head, "|---" * (len(steps_list) + 2) + "|"]
    for name, by_steps in result.items():
        gaps = [result["Euler"][s] - by_steps[s] for s in steps_list]
        cells = [f"{by_steps[s]:.3f} ({g:+.3f})" for s, g in zip(steps_list, gaps)]
        mark = "" if max(gaps) <= TARGET + 1e-9 else " (over 0.10)"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {max(gaps):.3f}{mark} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="prompts (seeds 1000 + i)")
    parser.add_argument("--steps", default="10,20,25", help="step counts, comma-separated")
    parser.add_argument("--sampler", action="append", default=None, help="a sampler (repeatable; default: all)")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="guidance scale (default: the model's recommended scale)")
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="write the JSON report here")
    out.add_argument("--results", action="store_true", help="write it to benchmarks/results/sampler_oracle.json")
    args = parser.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]
    names = ["Euler"] + [n for n in (args.sampler or sampler_names()) if n != "Euler"]
    pipe = Pipeline.load(args.model)
    scenes = prompt_set("seen", args.n)
    cond = pipe.encode_prompt([full_caption(s) for s in scenes])
    result = rates(pipe, scenes, cond, names, steps_list, args.cfg_scale)
    print(table(result, steps_list))
    emit_report({"prompts": args.n, "seed": SEED, "cfg_scale": args.cfg_scale, "target_gap": TARGET,
                 "all_right": result},
                result_file(__file__) if args.results else args.out)


if __name__ == "__main__":
    main()
