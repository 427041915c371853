"""`sdlab train METHOD` on the one training loop, a subcommand for each registered method (sdlab.training.methods)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from .options import add_config_arguments, argument_group, parsed_values

EXAMPLES = """examples:
  sdlab train textual-inversion --data shapes/ --placeholder "<my-shape>" --initializer shape --max-steps 500
  sdlab train lora --data shapes/ --instance-prompt "a sks shape" --rank 8 --output-dir runs/lora
  sdlab train dreambooth --data shapes/ --instance-prompt "a sks shape" --class-prompt "a shape"
  sdlab train finetune --data striped/ --ema
  sdlab train vae-decoder --data striped/ --batch-size 16 --max-steps 600   (then: sdlab generate --vae OUT/vae)
  sdlab train dreambooth ... --memory-budget 12GiB   (the fastest memory options that fit)
  sdlab train lora ... --resume latest          (continue exactly where a run stopped)
  accelerate launch --num_processes 2 -m sdlab.cli.main train lora ...   (see docs/training.md)
"""


def _arguments(p: argparse.ArgumentParser, spec) -> None:
    """The loop's options (TrainingConfig's fields; their help shows the method's recipe and the
    shipped model's training_defaults.json), the command's own (memory budget, resume), then the
    method's options (its options' fields); `spec`: a MethodSpec or its torch-free Declaration."""
    from ..models.training_defaults import shipped_recipe_as_written
    from ..training.config import LOGS, MEM, TrainingConfig

    shipped = {k: {"more": f" (the shipped model: {v})"} for k, v in shipped_recipe_as_written(spec.name).items()}
    recipe = {k: {"default": v, **shipped.get(k, {})} for k, v in spec.recipe.items()}
    add_config_arguments(p, TrainingConfig, **{**shipped, **recipe})
    # the help shows the recipe; the namespace holds only what was typed, so that the model's own
    # training_defaults.json comes between the two (MethodSpec.config)
    loop = {f.name for f in fields(TrainingConfig) if f.default is not MISSING}      # not --data, --output-dir
    for action in p._actions:
        if action.dest in loop:
            action.default = argparse.SUPPRESS
    mem, logs = argument_group(p, MEM), argument_group(p, LOGS)
    mem.add_argument("--memory-budget", default=None, metavar="SIZE",
                     help="e.g. 6GiB: pick the fastest memory options whose peak fits (CUDA: 2 trial steps per "
                          "option set; CPU: saved-tensor accounting); see docs/training.md")
    mem.add_argument("--memory-estimate", action="store_true",
                     help="with --memory-budget: plan from the analytic estimate, without trial steps")
    logs.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    add_config_arguments(p.add_argument_group(f"{spec.name} options"), spec.options)


# the line of `sdlab --help` (the methods are listed by `sdlab train --help`: loading them imports torch)
HELP = {"train": "personalize a model with a registered training method (textual inversion, LoRA, ...)"}


def register(sub) -> None:
    """`sdlab train` with a subcommand per method, from the methods' torch-free declarations."""
    from ..training.methods import registry

    declared = registry.declarations()
    p = sub.add_parser("train", help="personalize a model: " + ", ".join(d.name for d in declared),
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for spec in declared:
        q = methods.add_parser(spec.name, help=spec.summary or f"train with {spec.name}", epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _arguments(q, spec)
        q.set_defaults(run=run_train)


def method_from_args(args):
    """The method object of the parsed args (its options from the method's flags)."""
    from ..training.methods import registry

    spec = registry.get(args.method)
    values = parsed_values(spec.options, args)
    return spec.build(spec.options(**(spec.from_args(values) if spec.from_args else values)))


def config_from_args(args, options):
    """The TrainingConfig of the parsed args: the options typed, else the method's defaults on the model."""
    from ..training.config import TrainingConfig
    from ..training.methods import registry

    return registry.get(args.method).config(options, **parsed_values(TrainingConfig, args))


def fit_memory_budget(config, method, size: str, estimate: bool = False):
    """`config` with the fastest ladder rung whose peak fits `size`; says which on stderr."""
    import sys

    from ..training import memory

    budget = memory.parse_size(size)
    plan = memory.plan_for_budget(config, method, budget, measure=memory.estimate_step if estimate else None)
    print(f"sdlab train: {plan.explain()}", file=sys.stderr)
    return plan.config


def run_train(args) -> int:
    from ..errors import ConfigError
    from ..training.loop import train
    from ..training.memory import parse_size

    if args.memory_budget is not None:
        parse_size(args.memory_budget)          # a bad size fails before anything loads
    elif args.memory_estimate:
        raise ConfigError("--memory-estimate plans a --memory-budget; give one, e.g. --memory-budget 6GiB")
    method = method_from_args(args)
    config = config_from_args(args, method.options)
    if args.memory_budget is not None:
        config = fit_memory_budget(config, method, args.memory_budget, args.memory_estimate)
    result = train(config, method, resume=args.resume)
    for path in result.saved:
        print(path)
    return 0
