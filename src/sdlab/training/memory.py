"""Fit a training run into a memory budget (`sdlab train ... --memory-budget 6GiB`).

A ladder of option sets ("rungs") runs from the fastest to the most frugal; the planner takes
the first whose peak fits. A peak comes from one of three places:

* measured: on CUDA, two real training steps and `torch.cuda.max_memory_allocated`
  (`measure_peak_bytes`);
* accounted: on the CPU, the same setup and one forward pass whose saved-for-backward
  tensors are counted (`sdlab.training.activations`), plus parameter, gradient and optimizer
  bytes: device independent, so it runs (and is tested) anywhere;
* estimated: no forward pass at all, from the model configs (`estimate_peak_bytes`).

All three use one model of the peak of a step (see `Breakdown`): the weights, the trainable
parameters' gradients and optimizer state, and the larger of the activations (live at the
start of backward) and the optimizer's own scratch (live during `optimizer.step()`).
"""

from __future__ import annotations

import dataclasses
import gc
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from .config import TrainingConfig

GIB = 2**30
TOKENS = 77                 # CLIP text length: the cross-attention keys
_UNITS = {"": None, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)

# Bytes per trainable parameter of the optimizer state: AdamW keeps exp_avg and exp_avg_sq in
# the parameter's dtype (fp32: 2 x 4); bitsandbytes' AdamW8bit keeps them as 8-bit blocks
# (Dettmers et al. 2022: 2 x 1 byte plus one fp32 absmax per 2048 values, ~2 bytes).
ADAM_STATE_BYTES = {False: 8, True: 2}
# Scratch of torch's multi-tensor (foreach) AdamW step on CUDA: `_foreach_sqrt(exp_avg_sq)`
# is one fp32 copy of the parameters (torch/optim/adamw.py `_multi_tensor_adamw`); the 8-bit
# kernels update in place.
ADAM_SCRATCH_BYTES = {False: 4, True: 0}


def parse_size(text) -> int:
    """'6GiB', '7.5G', '512MiB', '8GB' -> bytes. GiB/MiB/G/M are powers of 2, GB/MB of 10."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or _UNITS.get(unit) is None:
        raise ConfigError(f"memory size must be a number with a unit, like 6GiB, 7.5G or 512MiB "
                          f"(GiB/MiB/G/M: powers of 2; GB/MB: powers of 10); got {text!r}")
    value = float(m.group(1)) * _UNITS[unit]
    if value < 1:
        raise ConfigError(f"memory size must be positive, got {text!r}")
    return int(value)


def gib(n: float) -> str:
    """Bytes for people: '5.25 GiB', '12.3 MiB', '4.0 KiB'."""
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


# --- the ladder ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rung:
    """One option set: TrainingConfig field overrides, cumulative down the ladder."""

    name: str
    overrides: dict


def _cuda(cfg: TrainingConfig) -> bool:
    return cfg.device != "cpu" and torch.cuda.is_available() and (cfg.device or "cuda").startswith("cuda")


def _bnb_available() -> bool:
    import importlib

    try:
        importlib.import_module("bitsandbytes")
    except Exception:          # ImportError, or a broken CUDA setup inside bitsandbytes
        return False
    return True


def ladder(cfg: TrainingConfig, *, cuda: bool | None = None, bf16: bool | None = None,
           bnb: bool | None = None) -> list[Rung]:
    """Rungs from fastest to most frugal for `cfg`. Options the user already turned on stay on.

    1. mixed precision (bf16 where CUDA supports it, else fp16) and SDPA attention;
    2. + gradient checkpointing (Chen et al. 2016; ~30 % slower steps);
    3. + 8-bit AdamW (only with CUDA and bitsandbytes); on the CPU: bf16 weights instead;
    4. + batch size 1 with gradient accumulation keeping the effective batch (batch > 1 only);
    5. + sliced attention (a last resort: with torch >= 2 SDPA usually keeps less for backward).
    """
    cuda = _cuda(cfg) if cuda is None else cuda
    if bf16 is None:
        bf16 = cuda and torch.cuda.is_bf16_supported()
    bnb = (cuda and _bnb_available()) if bnb is None else bnb
    first: dict = {}
    if cuda and cfg.mixed_precision == "no":
        first["mixed_precision"] = "bf16" if bf16 else "fp16"
    if cfg.attention == "default":
        first["attention"] = "sdpa"
    steps = [("gradient checkpointing", {"gradient_checkpointing": True})]
    if cuda and bnb:
        steps.append(("8-bit Adam", {"use_8bit_adam": True}))
    elif not cuda and cfg.mixed_precision == "no":
        steps.append(("bf16", {"mixed_precision": "bf16"}))
    if cfg.batch_size > 1:
        steps.append((f"batch 1 x {cfg.batch_size * cfg.grad_accum} accumulation",
                      {"batch_size": 1, "grad_accum": cfg.batch_size * cfg.grad_accum}))
    if cfg.attention != "sliced":
        steps.append(("sliced attention", {"attention": "sliced"}))
    rungs = [Rung(describe(apply_overrides(cfg, first)), first)]
    current = dict(first)
    for _, change in steps:
        if all(getattr(cfg, k) == v for k, v in change.items()):
            continue                                   # already on
        current = {**current, **change}
        rungs.append(Rung(describe(apply_overrides(cfg, current)), dict(current)))
    return rungs


def apply_overrides(cfg: TrainingConfig, overrides: dict) -> TrainingConfig:
    return dataclasses.replace(cfg, **overrides)


def describe(cfg: TrainingConfig) -> str:
    """The memory options of `cfg` in a few words: 'fp16, sdpa, gradient checkpointing'."""
    parts = [cfg.mixed_precision if cfg.mixed_precision != "no" else "fp32", f"{cfg.attention} attention"]
    if cfg.gradient_checkpointing:
        parts.append("gradient checkpointing")
    if cfg.use_8bit_adam:
        parts.append("8-bit Adam")
    parts.append(f"batch {cfg.batch_size}" + (f" x {cfg.grad_accum} accumulation" if cfg.grad_accum > 1 else ""))
    return ", ".join(parts)


# --- the peak of a step -------------------------------------------------------------------------
@dataclass
class Breakdown:
    """Bytes of one training step. peak = weights + grads + optimizer + autocast copies
    + max(activations, optimizer scratch)."""

    weights: int = 0              # every parameter and buffer, at its dtype
    trainable_params: int = 0     # how many parameters train
    grads: int = 0
    optimizer: int = 0
    autocast_copies: int = 0      # low-precision casts of trainable fp32 weights (autocast cache)
    activations: int = 0
    optimizer_scratch: int = 0

    @property
    def peak(self) -> int:
        return (self.weights + self.grads + self.optimizer + self.autocast_copies
                + max(self.activations, self.optimizer_scratch))


@dataclass
class Measurement:
    peak_bytes: int
    kind: str                          # "measured on CUDA", "CPU accounting", "estimate"
    breakdown: Breakdown | None = None
    steps_per_s: float | None = None
    load_peak_bytes: int | None = None  # CUDA: the peak while loading and setting up


def _optimizer_bytes(cfg: TrainingConfig, params) -> tuple[int, int, int]:
    """(grads, optimizer state, optimizer scratch) bytes for these trainable parameters."""
    grads = sum(p.numel() * p.element_size() for p in params)
    n = sum(p.numel() for p in params)
    if cfg.use_8bit_adam:
        return grads, n * ADAM_STATE_BYTES[True], 0
    return grads, 2 * grads, grads * ADAM_SCRATCH_BYTES[False] // 4


def _fresh(method, cfg: TrainingConfig):
    """An unset-up copy of `method` for a trial run; prior preservation keeps its class-image
    cache where the real run will look for it, so the trial's class images are not thrown away."""
    from .methods.prior import PriorOptions

    options = method.options
    if isinstance(options, PriorOptions) and options.prior_preservation and options.class_data_dir is None:
        options = dataclasses.replace(options, class_data_dir=str(Path(cfg.output_dir) / "class_images"))
    return type(method)(options)


def _trial_config(cfg: TrainingConfig, out: str, steps: int) -> TrainingConfig:
    return dataclasses.replace(cfg, output_dir=out, max_steps=max(steps, 1), validation_prompts=(), use_ema=False)


def _modules(method):
    c = method.c
    return [c.unet, c.vae, c.text_encoder]


def _weight_bytes(modules) -> int:
    seen: dict = {}
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            st = t.untyped_storage()
            seen[(t.device.type, st.data_ptr())] = st.nbytes()
    return sum(seen.values())


def _autocast_copy_bytes(cfg: TrainingConfig, modules, trainable) -> int:
    """Autocast keeps a low-precision copy of each trainable fp32 Linear/Conv weight for the
    whole autocast region (torch's autocast weight cache), checkpointing or not."""
    if cfg.mixed_precision == "no":
        return 0
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    ids = {id(p) for p in trainable if p.dtype == torch.float32}
    return sum(2 * p.numel() for mod in modules for m in mod.modules() if isinstance(m, kinds)
               for p in m.parameters(recurse=False) if id(p) in ids)


def account_step(cfg: TrainingConfig, method, *, steps: int = 0) -> Measurement:
    """CPU accounting of one training step of `cfg` as it would run on CUDA (fp16 accounted as
    bf16: same bytes; 8-bit Adam by its state size; AdamW's foreach scratch); with `steps`,
    also time that many real CPU steps."""
    from .activations import count_activations
    from .loop import Trainer

    trial = dataclasses.replace(cfg, device="cpu", use_8bit_adam=False,
                                mixed_precision="bf16" if cfg.mixed_precision == "fp16" else cfg.mixed_precision)
    m = _fresh(method, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(_trial_config(trial, tmp, steps), m)
        for mod in trainer.modules:
            mod.train()
        modules = _modules(m)
        exclude = [t for mod in modules for t in list(mod.parameters()) + list(mod.buffers())]
        trainable = m.parameters()
        batch = trainer.micro_batch(0)
        with trainer.acc.autocast():
            count, loss = count_activations(lambda: m.loss(batch), [m.c.unet, m.c.text_encoder], exclude,
                                            trainable=trainable)
        del loss
        grads, state, scratch = _optimizer_bytes(cfg, trainable)
        b = Breakdown(weights=_weight_bytes(modules), trainable_params=sum(p.numel() for p in trainable),
                      grads=grads, optimizer=state, autocast_copies=_autocast_copy_bytes(trial, modules, trainable),
                      activations=count.peak, optimizer_scratch=scratch)
        rate = None
        if steps:
            t = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            rate = steps / (time.perf_counter() - t)
        del trainer
    gc.collect()
    return Measurement(b.peak, "CPU accounting", b, rate)


def measure_run(cfg: TrainingConfig, method, steps: int = 2) -> Measurement:
    """On CUDA: `steps` real training steps (the first allocates the optimizer state) with the
    peak of `torch.cuda.max_memory_allocated` over the steps and steps/s after the first.
    Elsewhere: `account_step` (device-independent accounting, then timed CPU steps)."""
    from .loop import Trainer

    if not _cuda(cfg):
        return account_step(cfg, method, steps=steps)
    steps, kind = max(steps, 2), "measured on CUDA"
    m = _fresh(method, cfg)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            trainer = Trainer(_trial_config(cfg, tmp, steps), m)
            for mod in trainer.modules:
                mod.train()
            load_peak = torch.cuda.max_memory_allocated() - base
            torch.cuda.reset_peak_memory_stats()
            trainer.train_step()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps - 1):
                trainer.train_step()
            torch.cuda.synchronize()
            rate = (steps - 1) / (time.perf_counter() - t)
            peak = torch.cuda.max_memory_allocated() - base
        except torch.cuda.OutOfMemoryError:       # counts as the whole GPU: it does not fit
            peak, rate, load_peak = torch.cuda.get_device_properties(0).total_memory, 0.0, None
            kind = "out of memory on CUDA"
        finally:
            trainer = m = None
            gc.collect()
            torch.cuda.empty_cache()
    return Measurement(peak, kind, None, rate, load_peak)


def measure_peak_bytes(cfg: TrainingConfig, method) -> int:
    """Peak bytes of a training step: CUDA measured (the larger of loading and two steps),
    CPU accounted (see `account_step`)."""
    r = _plan_measure(cfg, method)
    return max(r.peak_bytes, r.load_peak_bytes or 0)


def _plan_measure(cfg: TrainingConfig, method) -> Measurement:
    """The planner's default: 2 CUDA steps, or the CPU accounting without timed steps."""
    return measure_run(cfg, method, steps=2 if _cuda(cfg) else 0)


# --- the estimate -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureVolume:
    """Elements per sample of a UNet's block outputs at one latent size."""

    resnets: int          # sum of channels x area over resnet blocks
    transformers: int     # ... over transformer (attention) blocks
    attn_probs: int       # self-attention probability elements (heads x tokens^2), all blocks
    cross_probs: int      # cross-attention probability elements (heads x tokens x 77)
    largest_block: int    # channels x area of the largest single block
    largest_probs: int    # attention probability elements of the largest transformer block


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def feature_volume(unet_config, latent_h: int, latent_w: int) -> FeatureVolume:
    """Walk the diffusers UNet2DConditionModel layout: down blocks (layers_per_block resnets,
    as many transformers in CrossAttn blocks), the mid block (2 resnets, 1 transformer), up
    blocks (layers_per_block + 1 of each)."""
    cfg = dict(unet_config)
    chans = list(cfg["block_out_channels"])
    levels = len(chans)
    layers = _per_level(cfg.get("layers_per_block", 2), levels)
    heads = _per_level(cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8), levels)
    per_block = _per_level(cfg.get("transformer_layers_per_block", 1), levels)
    down, up = cfg["down_block_types"], cfg["up_block_types"]
    res = attn = probs = cross = largest = largest_probs = 0

    def add(level: int, n_res: int, n_attn: int) -> None:
        nonlocal res, attn, probs, cross, largest, largest_probs
        area = (latent_h >> level) * (latent_w >> level)
        vol = chans[level] * area
        res += n_res * vol
        attn += n_attn * vol * per_block[level]
        probs += n_attn * per_block[level] * heads[level] * area * area
        cross += n_attn * per_block[level] * heads[level] * area * TOKENS
        largest = max(largest, vol)
        if n_attn:
            largest_probs = max(largest_probs, heads[level] * area * (area + TOKENS))

    for i, kind in enumerate(down):
        add(i, layers[i], layers[i] if "CrossAttn" in kind else 0)
    mid = cfg.get("mid_block_type") or "UNetMidBlock2DCrossAttn"
    add(levels - 1, 2, 1 if "CrossAttn" in mid else 0)
    for j, kind in enumerate(up):
        level = levels - 1 - j
        add(level, layers[level] + 1, layers[level] + 1 if "CrossAttn" in kind else 0)
    return FeatureVolume(res, attn, probs, cross, largest, largest_probs)


# Activation bytes per element of the UNet's feature volume (channels x latent area summed
# over its resnet and transformer blocks; `feature_volume`), one sample, SDPA attention. From
# the saved-tensor accounting (`account_step`) of LoRA rank 4 on the SD 1.5 architecture
# (random weights) at 256x256, where they are within 1 % of 512x512 (everything scales with
# the latent area). Keys: (low precision?, gradient checkpointing?).
UNET_ACT_BYTES = {(False, False): 68.6, (False, True): 17.7, (True, False): 39.1, (True, True): 9.3}
# Training the whole UNet also keeps what the layers before LoRA's first trainable one need
# for their weight gradients: DreamBooth / LoRA activations, same accounting and keys.
FULL_UNET_FACTOR = {(False, False): 1.17, (False, True): 1.09, (True, False): 1.05, (True, True): 1.04}
# A text encoder with gradients through it (textual inversion; --train-text-encoder) adds
# activations per layer x token x hidden size (CLIP ViT-L/14 text model, same accounting);
# a frozen fp32 one under autocast also saves the low-precision copy of each Linear weight
# it multiplies (textual inversion keeps the text encoder fp32).
TEXT_ACT_BYTES = {(False, False): 56.4, (False, True): 8.7, (True, False): 32.2, (True, True): 6.6}


def model_shapes(model=None):
    """unet, vae and text_encoder of `model` with meta tensors (shapes only, no memory)."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..models.loader import load_pipeline_components
    from ..models.shipped import model_location

    path = model_location(model)
    if not path.is_dir():                    # a single-file checkpoint: load it (fp16) to count
        c = load_pipeline_components(path, dtype="fp16", device="cpu")
        return SimpleNamespace(unet=c.unet, vae=c.vae, text_encoder=c.text_encoder)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(path / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(path / "text_encoder"))
    return SimpleNamespace(unet=unet, vae=vae, text_encoder=text)


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_numel(layers: dict, rank: int) -> int:
    """Parameters of peft's LoRA on `layers` (Linear / Conv2d): down (in x k x k -> rank), up (rank -> out)."""
    total = 0
    for m in layers.values():
        if isinstance(m, torch.nn.Linear):
            total += rank * (m.in_features + m.out_features)
        else:
            total += rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
    return total


def cast_numel(module) -> int:
    """Parameters of the Linear and Conv layers (what autocast casts)."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    return sum(p.numel() for m in module.modules() if isinstance(m, kinds) for p in m.parameters(recurse=False))


@dataclass(frozen=True)
class Footprint:
    """What a method trains, as the estimate needs it: each method's MethodSpec.footprint
    (components, options, low precision) gives one."""

    trainable: int                  # trainable parameters
    weights: int                    # bytes of every weight, at its dtype
    autocast_copies: int = 0        # bytes of the low-precision casts of trainable fp32 weights
    text_trained: bool = False      # gradients flow through the text encoder: its activations are kept
    whole_unet: bool = True         # the UNet keeps activations as when all of it trains (FULL_UNET_FACTOR)
    text_casts: bool = False        # a frozen fp32 text encoder under autocast keeps its weights' casts
    samples: int = 1                # samples per batch item (prior preservation: 2)


def whole_unet_footprint(c, low: bool, train_text: bool, samples: int = 1) -> Footprint:
    """The whole UNet trains in fp32 (and the text encoder, with `train_text`), the rest is cast."""
    unet_n, vae_n, text_n, wb = numel(c.unet), numel(c.vae), numel(c.text_encoder), 2 if low else 4
    cast = cast_numel(c.unet) + (cast_numel(c.text_encoder) if train_text else 0)
    return Footprint(trainable=unet_n + (text_n if train_text else 0),
                     weights=unet_n * 4 + vae_n * wb + text_n * (4 if train_text else wb),
                     autocast_copies=cast * 2 if low else 0, text_trained=train_text, samples=samples)


def estimate_step(cfg: TrainingConfig, method, components=None) -> Measurement:
    """Analytic peak of one training step (no forward pass): what the method trains (its
    MethodSpec.footprint) and the activation constants above."""
    from .methods.base import native_resolution
    from .methods.registry import get

    footprint = get(method.name).footprint
    if footprint is None:
        raise ConfigError(f"training method {method.name!r} has no memory estimate: plan its --memory-budget "
                          "without --memory-estimate")
    c = components or model_shapes(cfg.model)
    low = cfg.mixed_precision != "no"
    f = footprint(c, method.options, low)
    res = cfg.resolution or native_resolution(c)
    lat = res // 2 ** (len(c.vae.config.block_out_channels) - 1)
    fv = feature_volume(c.unet.config, lat, lat)
    key = (low, cfg.gradient_checkpointing)
    per_sample = UNET_ACT_BYTES[key] * (fv.resnets + fv.transformers)
    if cfg.attention == "sliced":          # attention probabilities saved for backward
        ab = 2 if low else 4
        per_sample += ab * (fv.largest_probs if cfg.gradient_checkpointing else fv.attn_probs + fv.cross_probs)
    if f.whole_unet:
        per_sample *= FULL_UNET_FACTOR[key]
    if f.text_trained:
        t = c.text_encoder.config
        per_sample += TEXT_ACT_BYTES[key] * t.num_hidden_layers * TOKENS * t.hidden_size
        if low and f.text_casts:                           # saved casts of the frozen fp32 layers
            per_sample += 2 * cast_numel(c.text_encoder) / (t.num_hidden_layers if cfg.gradient_checkpointing else 1)
    b = Breakdown(weights=int(f.weights), trainable_params=int(f.trainable), grads=int(f.trainable * 4),
                  optimizer=int(f.trainable * ADAM_STATE_BYTES[cfg.use_8bit_adam]),
                  autocast_copies=int(f.autocast_copies), activations=int(per_sample * (cfg.batch_size * f.samples)),
                  optimizer_scratch=int(f.trainable * ADAM_SCRATCH_BYTES[cfg.use_8bit_adam]))
    return Measurement(b.peak, "estimate", b)


def estimate_peak_bytes(cfg: TrainingConfig, method, components=None) -> int:
    """Analytic peak bytes of a training step (`estimate_step`)."""
    return estimate_step(cfg, method, components).peak_bytes


# --- the plan -----------------------------------------------------------------------------------
@dataclass
class Plan:
    config: TrainingConfig
    rung: Rung
    peak_bytes: int
    budget_bytes: int
    kind: str
    tried: list[tuple[Rung, int]] = field(default_factory=list)

    def explain(self) -> str:
        skipped = "; ".join(f"{r.name}: {gib(p)}" for r, p in self.tried[:-1])
        why = f"; faster option sets need more ({skipped})" if skipped else "; the fastest option set fits"
        return (f"memory budget {gib(self.budget_bytes)}: {self.rung.name}, peak {gib(self.peak_bytes)} "
                f"by {self.kind}{why}")


def _peak(result) -> tuple[int, str | None]:
    if isinstance(result, Measurement):
        return max(result.peak_bytes, result.load_peak_bytes or 0), result.kind
    return int(result), None


def plan_for_budget(cfg: TrainingConfig, method, budget_bytes: int, measure=None, rungs=None) -> Plan:
    """The first (fastest) rung of `ladder(cfg)` whose peak fits `budget_bytes`.

    `measure(cfg, method)` gives a peak (bytes, or a Measurement); default: two real CUDA
    steps, or the CPU accounting.
    Raises ConfigError naming the smallest peak found when no rung fits."""
    measure = measure or _plan_measure
    tried, kind = [], None
    for rung in rungs or ladder(cfg):
        trial = apply_overrides(cfg, rung.overrides)
        peak, kind = _peak(measure(trial, method))
        kind = kind or getattr(measure, "label", "measured")
        tried.append((rung, peak))
        if peak <= budget_bytes:
            return Plan(trial, rung, peak, budget_bytes, kind, tried)
    rung, peak = min(tried, key=lambda rp: rp[1])
    other = ", or train LoRA or textual inversion" if method.train_unet else ""
    raise ConfigError(f"nothing fits the memory budget of {gib(budget_bytes)}: the smallest peak is {gib(peak)} "
                      f"({kind}, {rung.name}); lower --resolution or --batch-size{other}")
