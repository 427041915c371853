"""Few-step generation (issue 22): a distilled LCM (or LCM-LoRA) against its base model.

    python benchmarks/lcm_eval.py --lcm runs/lcm/model [--base MODEL] [--n 64] [--out r.json | --results]
    python benchmarks/lcm_eval.py --lcm-lora runs/lcm/lcm_lora.safetensors [--n 64]

Quality: the oracle's all-right rate on the "seen" and "held_out" prompt sets (n scenes each, seeds
--seed + i, default 3000) at 1, 2, 4 and 8 steps of the LCM sampler and of TCD (Zheng et al. 2024, gamma 0.3), next to
the base model at 25 Euler steps with its recommended CFG scale (generation_defaults.json; 7.5 for
Stable Diffusion); the target is a 4-step rate within 0.05 of the base's.
Speed, in the same run: images per second of sdlab's LCM at 4 steps and of plain diffusers
(StableDiffusionPipeline + EulerDiscreteScheduler, 25 steps, the same CFG) on the base model, batch 1
and 4 (median of --repeats timed calls after a warm-up); the target is
>= 5x. Prints both tables and the JSON report; `--results` writes it to benchmarks/results/lcm_eval.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from report import cpu_description, result_file
from sdlab.config import GenerationConfig
from sdlab.evaluate import emit_report
from sdlab.pipeline import DEFAULT_MODEL, Pipeline
from sdlab.sampling.denoiser import w_conditioned
from sdlab.world.captions import full_caption
from sdlab.world.metrics import accuracy
from sdlab.world.prompt_sets import prompt_set

SEED = 3000
SETS = ("seen", "held_out")
BASE_STEPS = 25
QUALITY_GAP, SPEEDUP = 0.05, 5.0        # the targets, at 4 LCM steps
PROMPT = "a large red circle on the left on a blue background"


def all_right(pipe, scenes, sampler: str, steps: int, cfg: float, chunk: int = 16,
              schedule: str = "Automatic", seed: int = SEED) -> float:
    """The oracle's all-right rate of `pipe` on `scenes` (their full captions, seeds `seed` + i)."""
    images = []
    for start in range(0, len(scenes), chunk):
        part = scenes[start:start + chunk]
        cond = pipe.encode_prompt([full_caption(s) for s in part])
        config = GenerationConfig("", sampler=sampler, schedule=schedule, steps=steps, cfg_scale=cfg,
                                  seed=seed + start, batch_size=len(part))
        images += pipe.generate(config, cond=cond).images
    return accuracy(scenes, images)["all"]


def quality(base, lcm, n: int, lcm_steps, lcm_cfg: float, samplers=("LCM",), schedule: str = "Automatic",
            seed: int = SEED) -> dict:
    out, cfg = {}, base_cfg(base)
    for name in SETS:
        scenes = prompt_set(name, n)
        row = {"base": all_right(base, scenes, "Euler", BASE_STEPS, cfg, seed=seed)}
        for sampler in samplers:
            for steps in lcm_steps:
                row[f"{sampler.lower()} {steps}"] = all_right(lcm, scenes, sampler, steps, lcm_cfg, schedule=schedule,
                                                                    seed=seed)
        out[name] = row
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    return out


def images_per_second(fn, batch: int, repeats: int) -> float:
    fn()                                                    # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def speed(base_model, lcm, batches, repeats: int, lcm_cfg: float, cfg: float) -> dict:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(base_model, safety_checker=None, requires_safety_checker=False)
    ref.scheduler = EulerDiscreteScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    out = {}
    for batch in batches:
        def plain():
            ref(PROMPT, num_inference_steps=BASE_STEPS, guidance_scale=cfg, num_images_per_prompt=batch,
                generator=torch.Generator("cpu").manual_seed(0))

        def ours():
            lcm.generate(GenerationConfig(PROMPT, sampler="LCM", steps=4, cfg_scale=lcm_cfg, seed=0,
                                          batch_size=batch))

        d, s = images_per_second(plain, batch, repeats), images_per_second(ours, batch, repeats)
        out[f"batch {batch}"] = {"diffusers_euler_25_cfg": round(d, 3), "sdlab_lcm_4": round(s, 3),
                                 "ratio": round(s / d, 2)}
        print(f"batch {batch}: diffusers {d:.2f} img/s, sdlab LCM 4 steps {s:.2f} img/s, x{s / d:.2f}", flush=True)
    return out


def tables(report: dict) -> str:
    q, steps = report["all_right"], report["lcm_steps"]
    lines = [f"| prompts | sampler | base (Euler 25, CFG {report['base_cfg_scale']:g}) | " + " | ".join(f"{s} steps" for s in steps) +
             " | 4-step gap |", "|---" * (len(steps) + 4) + "|"]
    for name, row in q.items():
        for sampler in report["samplers"]:
            key = sampler.lower()
            gap = row["base"] - row.get(f"{key} 4", float("nan"))
            lines.append(f"| {name} | {sampler} | {row['base']:.3f} | " +
                         " | ".join(f"{row[f'{key} {s}']:.3f}" for s in steps) +
                         f" | {gap:+.3f}{'' if gap <= QUALITY_GAP else ' (over 0.05)'} |")
    lines += ["", "| batch | diffusers Euler 25 + CFG (img/s) | sdlab LCM 4 (img/s) | ratio |", "|---|---|---|---|"]
    for batch, row in report["images_per_second"].items():
        mark = "" if row["ratio"] >= SPEEDUP else f" (under {SPEEDUP:g}x)"
        lines.append(f"| {batch.split()[1]} | {row['diffusers_euler_25_cfg']:.2f} | {row['sdlab_lcm_4']:.2f} | "
                     f"{row['ratio']:.2f}{mark} |")
    return "\n".join(lines)


def load_lcm(lcm=None, lcm_lora=None, base=None, **load) -> Pipeline:
    """The pipeline that samples the LCM: its model folder, or the base with the LCM-LoRA merged."""
    if lcm:
        return Pipeline.load(lcm, **load)
    pipe = Pipeline.load(base, **load)
    pipe.load_lora(lcm_lora, 1.0)
    return pipe


def base_cfg(pipe: Pipeline) -> float:
    """The base model's recommended CFG scale (its generation_defaults.json, else 7.5)."""
    return float(pipe.cfg_scale_for(None))


def lcm_cfg(pipe: Pipeline) -> float:
    """The guidance an LCM samples with by default: w of a w-conditioned UNet (the model's recommended
    scale, which `sdlab train lcm` carries over from the base), else none (1)."""
    return base_cfg(pipe) if w_conditioned(pipe.c.unet) else 1.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/lcm_eval.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--lcm", help="the distilled model folder (sdlab train lcm: OUTPUT/model)")
    which.add_argument("--lcm-lora", help="an LCM-LoRA file (sdlab train lcm --lora: OUTPUT/lcm_lora.safetensors)")
    ap.add_argument("--base", default=None, help="the base model (default: the shipped model)")
    ap.add_argument("--n", type=int, default=64, help="scenes per prompt set")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="step counts of the few-step samplers")
    ap.add_argument("--samplers", nargs="+", default=["LCM", "TCD"], choices=["LCM", "TCD"],
                    help="few-step samplers to score (the speed test uses LCM: TCD costs the same per step)")
    ap.add_argument("--schedule", default="Automatic",
                    help="the few-step samplers' schedule type (default Automatic: the LCM timesteps)")
    ap.add_argument("--cfg-scale", type=float, default=None,
                    help="the LCM's guidance: w of a w-conditioned LCM (default: its recommended scale), "
                         "1 for an LCM-LoRA")
    ap.add_argument("--seed", type=int, default=SEED,
                    help=f"first seed (default {SEED}; another one confirms a setting chosen on these)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes of the speed test")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per speed measurement (median)")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="write the JSON report here")
    out.add_argument("--results", action="store_true", help="write it to benchmarks/results/lcm_eval.json")
    args = ap.parse_args(argv)
    base, lcm = Pipeline.load(args.base), load_lcm(args.lcm, args.lcm_lora, args.base)
    cfg = args.cfg_scale if args.cfg_scale is not None else lcm_cfg(lcm)
    report = {"lcm": args.lcm or args.lcm_lora, "base": args.base or "the shipped model", "n": args.n,
              "seed": args.seed, "base_cfg_scale": base_cfg(base), "lcm_cfg_scale": cfg, "lcm_steps": args.steps, "samplers": args.samplers,
              "schedule": args.schedule, "hardware": cpu_description(),
              "targets": {"all_right_gap_at_4": QUALITY_GAP, "speedup_at_4": SPEEDUP}}
    report["all_right"] = quality(base, lcm, args.n, args.steps, cfg, args.samplers, args.schedule, args.seed)
    report["images_per_second"] = speed(str(args.base or DEFAULT_MODEL), lcm, args.batch, args.repeats, cfg,
                                        report["base_cfg_scale"])
    print(tables(report))
    emit_report(report, result_file(__file__) if args.results else args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
