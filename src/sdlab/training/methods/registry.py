"""The training methods, each declared once by its module's `SPEC` (a MethodSpec): its options
(with their flags and help: `sdlab.config.setting`), its recipe (the loop defaults measured for
the shipped model), which options a resume must keep, how a checkpoint of it is applied to a
pipeline, its model-card usage line and its memory estimate. `sdlab train`, the studio,
`sdlab eval`, the model card and the memory planner loop over this registry.

A new method is one module that ends with `SPEC = MethodSpec(...)` plus its line in MODULES
(or `register(spec)` from anywhere); see "Adding a training method" in docs/training.md.

`sdlab train --help` builds its parser without importing torch (issue 22): a built-in module
NAME (which imports torch) keeps its options dataclass and a `DECLARATION = Declaration(name,
options, recipe, summary)` in a torch-free sibling `NAME_options.py`, and its spec is
`SPEC = MethodSpec.declared(DECLARATION, method=..., ...)`; `declarations()` reads only those
siblings (a module without one is imported whole, torch and all).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ...errors import ConfigError
from ..config import TrainingConfig

# sdlab.training.methods.<module>.SPEC, in the order `sdlab train --help` lists them
MODULES = ("textual_inversion", "dreambooth", "lora", "finetune", "vae_decoder", "controlnet", "lcm")
_SPECS: dict[str, "MethodSpec"] = {}
_loaded = False


def load_trained_weights(pipe, state: dict, path: Path) -> None:
    """Put a checkpoint's trained weights ("unet.<param>", "text_encoder.<param>", "vae.<param>";
    the EMA ones when it kept an EMA) into `pipe`'s modules: the default `apply_checkpoint`, for
    methods whose trainable parameters are the model's own."""
    from ..checkpoints import trained_weights

    weights = trained_weights(state)
    for comp in ("unet", "text_encoder", "vae"):
        sub = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(comp + ".")}
        if sub:
            missing = getattr(pipe.c, comp).load_state_dict(sub, strict=False)
            if missing.unexpected_keys:
                raise ConfigError(f"checkpoint '{path}' does not fit the model: {missing.unexpected_keys[:3]}")


@dataclass(frozen=True)
class Declaration:
    """What `sdlab train --help` shows of a method (the MethodSpec fields of the same names),
    declared in a torch-free module."""

    name: str
    options: type
    recipe: Mapping[str, Any]
    summary: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """Everything about one training method that is not the training itself.

    method: the Method class, called with an options object. options: its frozen options
    dataclass, whose fields (declared with `sdlab.config.setting`) give `sdlab train NAME`'s
    method options. recipe: TrainingConfig defaults of this method (learning rate, weight decay,
    steps, ...), measured for the shipped model where they also suit Stable Diffusion (a model
    folder's training_defaults.json replaces them for that model: `defaults`). resume_keeps:
    options a resumed run must keep (they decide what trains, and its shapes). apply_checkpoint(pipe, state, path):
    puts a training checkpoint's weights into a Pipeline. usage(config, options, saved, out):
    the model card's "Use" lines (`saved`: file name -> path). footprint(components, options,
    low_precision): what it trains, for the memory estimate (sdlab.training.memory.Footprint).
    from_args(values): adjusts the option values the CLI parsed. studio: TrainRequest field ->
    option name, for a method the studio offers."""

    name: str
    method: Callable
    options: type
    recipe: Mapping[str, Any]
    summary: str = ""
    resume_keeps: tuple[str, ...] = ()
    apply_checkpoint: Callable = load_trained_weights
    usage: Optional[Callable] = None
    footprint: Optional[Callable] = None
    from_args: Optional[Callable] = None
    studio: Optional[Mapping[str, str]] = None

    def __post_init__(self):
        loop, own = {f.name for f in fields(TrainingConfig)}, {f.name for f in fields(self.options)}
        checks = [("recipe", set(self.recipe) - (loop - {"method", "options"}), "is not a TrainingConfig field"),
                  ("resume_keeps", set(self.resume_keeps) - own, f"is not a field of {self.options.__name__}"),
                  ("options", own & loop, "is also a TrainingConfig field (their flags would collide)"),
                  ("studio", set((self.studio or {}).values()) - own, f"is not a field of {self.options.__name__}")]
        for what, bad, why in checks:
            if bad:
                raise ConfigError(f"training method {self.name!r}: {what} entry {sorted(bad)[0]!r} {why}")

    @classmethod
    def declared(cls, declaration: Declaration, method: Callable, **parts) -> "MethodSpec":
        """The spec of `method` with the name, options, recipe and summary of its `declaration`."""
        return cls(name=declaration.name, method=method, options=declaration.options, recipe=declaration.recipe,
                   summary=declaration.summary, **parts)

    def build(self, options=None):
        """The Method object, with `options` (None: the method's own defaults)."""
        return self.method() if options is None else self.method(options)

    def studio_options(self, params: Mapping[str, Any]):
        """The options of a studio request (its fields as `studio` maps them; absent ones default)."""
        return self.options(**{option: params[name] for name, option in (self.studio or {}).items() if name in params})

    def defaults(self, model=None) -> dict:
        """This method's TrainingConfig defaults on `model` (None: the shipped model): its recipe, then
        the model's recipe for it (its folder's training_defaults.json: sdlab.models.training_defaults)."""
        from ...models.training_defaults import model_recipe

        return {**self.recipe, **model_recipe(model, self.name)}

    def config(self, options, **settings) -> TrainingConfig:
        """The TrainingConfig of a run of this method: its defaults on settings' model, then `settings`."""
        return TrainingConfig(method=self.name, options=options, **{**self.defaults(settings.get("model")), **settings})


def _load_builtin() -> None:
    """Import the built-in method modules once (first use), their specs first in the registry."""
    global _loaded
    if not _loaded:
        builtin = [importlib.import_module(f"{__package__}.{module}").SPEC for module in MODULES]
        _SPECS.update({spec.name: spec for spec in builtin})
        _loaded = True


def declarations() -> list:
    """What `sdlab train --help` lists, in order, without importing torch: each built-in module's
    DECLARATION (from NAME_options.py; a module without one: its SPEC), then the specs that
    `register` added."""
    found = []
    for module in MODULES:
        light = f"{__package__}.{module}_options"
        found.append(importlib.import_module(light).DECLARATION if importlib.util.find_spec(light)
                     else importlib.import_module(f"{__package__}.{module}").SPEC)
    builtin = {d.name for d in found}
    return found + [s for s in _SPECS.values() if s.name not in builtin]


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (after the built-in ones); a name already taken is refused."""
    _load_builtin()
    if spec.name in _SPECS:
        raise ConfigError(f"a training method named {spec.name!r} is registered already")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a method that `register` added."""
    _load_builtin()
    _SPECS.pop(name, None)


def specs() -> list[MethodSpec]:
    """Every registered method, the built-in ones first."""
    _load_builtin()
    return list(_SPECS.values())


def names() -> tuple[str, ...]:
    return tuple(s.name for s in specs())


def get(name: str) -> MethodSpec:
    """The spec of method `name`; ConfigError naming the known ones otherwise."""
    _load_builtin()
    if name not in _SPECS:
        raise ConfigError(f"unknown training method {name!r}; use {', '.join(_SPECS)}")
    return _SPECS[name]
