"""The one training loop every personalization method plugs into (on `accelerate`).

nanoGPT-style: the loop is short and explicit. Sample `i` of the run (its global position)
decides its image, crop, flip, noise and timestep through a seed of its own, so data order
is a pure function of the step counter; together with the trainable weights, optimizer,
LR schedule, EMA and global RNG states saved in each checkpoint, a resumed run retraces an
uninterrupted one bit for bit (on the CPU), and N processes with batch B see the same
samples as one process with batch N*B.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from ..callbacks import CancelToken, StepCallback, StepEvent
from ..errors import Cancelled, ConfigError
from ..io.atomic import clean_stale_temps
from ..io.outputs import output_folder
from . import checkpoints as ck
from .config import TrainingConfig
from .buckets import BucketPlan, bucket_sizes
from .card import write_model_card
from .data import ImageDataset, read_examples, sample_index, sample_seed, split_examples
from .logs import LossLog, save_grid
from .methods.base import Batch, native_resolution, size_step


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)
    checkpoint: Optional[Path] = None


def make_accelerator(config: TrainingConfig):
    """An Accelerator for this run; bad precision/device combinations, and a sharding backend
    (FSDP, DeepSpeed) the run cannot use, become ConfigError."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from .backends import check_backend

    backend = check_backend(config.device, torch.cuda.is_available())
    if not torch.distributed.is_initialized():   # a fresh state per run in one process (tests, API)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    cpu = config.device == "cpu" or not torch.cuda.is_available()
    if config.mixed_precision == "fp16" and cpu:
        raise ConfigError("mixed_precision fp16 needs a CUDA GPU; on the CPU use 'bf16' or 'no'")
    try:
        acc = Accelerator(mixed_precision=config.mixed_precision, cpu=config.device == "cpu",
                          gradient_accumulation_steps=config.grad_accum)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"accelerate refused the settings (mixed_precision={config.mixed_precision}): {exc}") from exc
    if backend == "DeepSpeed":     # no dataloader goes through prepare(): DeepSpeed takes the batch from here
        acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    return acc


def make_optimizer(config: TrainingConfig, params):
    """AdamW (Loshchilov & Hutter 2019), or bitsandbytes' 8-bit AdamW (Dettmers et al. 2022) on CUDA."""
    kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    if not config.use_8bit_adam:
        return torch.optim.AdamW(params, **kwargs)
    if not torch.cuda.is_available() or config.device == "cpu":
        raise ConfigError("use_8bit_adam needs a CUDA GPU (bitsandbytes); leave it off on the CPU")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ConfigError("use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from exc
    return bnb.optim.AdamW8bit(params, **kwargs)


def make_lr_scheduler(config: TrainingConfig, optimizer):
    """diffusers' schedules by name, and transformers' warmup-stable-decay (Hu et al. 2024,
    MiniCPM): warm-up, a constant rate, then a cosine decay to 0 over the last `lr_decay_steps`."""
    if config.lr_scheduler == "warmup_stable_decay":
        from transformers.optimization import get_wsd_schedule

        decay = config.lr_decay_steps or max(1, min(config.max_steps // 3, config.max_steps - config.lr_warmup_steps))
        return get_wsd_schedule(optimizer, num_warmup_steps=config.lr_warmup_steps, num_decay_steps=decay,
                                num_training_steps=config.max_steps, decay_type="cosine")
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=config.max_steps)


def apply_memory_options(method, config: TrainingConfig) -> None:
    """Gradient checkpointing (Chen et al. 2016) and the attention implementation. The UNet is
    checkpointed whatever trains: the loss backpropagates through it even when only the text
    encoder's embeddings train (textual inversion), and then its activations dominate."""
    unet, text = method.c.unet, method.c.text_encoder
    trained = method.trainable_modules()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if text in trained:
            text.gradient_checkpointing_enable()
    if config.attention == "sliced":
        unet.set_attention_slice("auto")
    elif config.attention == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor2_0

        unet.set_attn_processor(AttnProcessor2_0())


RUN_CONFIG = "training_config.json"


def load_datasets(config: TrainingConfig, components, captioned: bool = True):
    """(training images, held-out images or None): --data, less --validation-split's share, or
    --validation-data; cropped to squares of the resolution or to its aspect buckets."""
    resolution = config.resolution or native_resolution(components)
    examples, held = split_examples(read_examples(config.data_dir, config.instance_prompt, captioned),
                                    config.validation_split, config.seed)
    if config.validation_data:
        try:
            held = read_examples(config.validation_data, config.instance_prompt, captioned)
        except ConfigError as err:
            raise ConfigError(f"validation data: {err}") from err
    buckets = bucket_sizes(resolution, size_step(components)) if config.aspect_buckets else None
    data = ImageDataset(examples, resolution, center_crop=config.center_crop, random_flip=config.random_flip,
                        skip_bad_images=config.skip_bad_images, buckets=buckets)
    val = ImageDataset(held, resolution, skip_bad_images=config.skip_bad_images, buckets=buckets) if held else None
    return data, val


def save_run_config(out: Path, config: TrainingConfig) -> None:
    """The run's settings beside its checkpoints, so `sdlab eval --run-dir` knows the base model."""
    import json

    from ..io.atomic import atomic_write_text

    d = config.to_dict()
    if d["model"] is not None and Path(d["model"]).exists():
        d["model"] = str(Path(d["model"]).resolve())      # eval may run from another folder
    atomic_write_text(out / RUN_CONFIG, json.dumps(d, indent=2, default=str) + "\n")


def run_base_model(run_dir: str | Path) -> str | None:
    """The base model a run in `run_dir` trained on (None: the shipped model, or not recorded)."""
    import json

    path = Path(run_dir) / RUN_CONFIG
    return json.loads(path.read_text()).get("model") if path.is_file() else None


SHIPPED_MODEL = "the shipped model"     # by name: its path changes with each install of sdlab


def model_identity(model: str | None) -> str:
    """The base model as a resume compares it: its resolved path, or SHIPPED_MODEL."""
    from ..models.shipped import SHIPPED, model_location

    if model_location(model).resolve() == SHIPPED["shapes-sd"].resolve():
        return SHIPPED_MODEL
    path = Path(model)
    return str(path.resolve()) if path.exists() else str(model)       # a shipped model's name stays a name


def checkpoint_model(path: Path, state: dict) -> str | None:
    """The base model checkpoint `path` trained on: as its state records it, or, for a checkpoint
    of an older sdlab, as its run's training_config.json does (None: not known)."""
    if "model" in state:
        return state["model"]
    run = Path(path).parent.parent
    return model_identity(run_base_model(run)) if (run / RUN_CONFIG).is_file() else None


def check_resume(path: Path, state: dict, config: TrainingConfig, method) -> None:
    """ConfigError unless checkpoint `path` (its `state`, or just ck.checkpoint_settings) is of
    `method`, with the same base model and the options its MethodSpec says a resume must keep."""
    from .methods.registry import get

    if state.get("method") != method.name:
        raise ConfigError(f"checkpoint '{path}' is from method {state.get('method')!r}, not {method.name!r}")
    mine = dataclasses.asdict(config.options) if config.options is not None else {}
    changed = [f"{k} {state['options'][k]!r} -> {mine[k]!r}" for k in get(method.name).resume_keeps
               if k in mine and k in state.get("options", {}) and state["options"][k] != mine[k]]
    old, new = checkpoint_model(path, state), model_identity(config.model)
    if old is not None and old != new:
        shown = [m if m == SHIPPED_MODEL else f"'{m}'" for m in (old, new)]
        changed.insert(0, f"model {shown[0]} -> {shown[1]}")
    if changed:
        raise ConfigError(f"checkpoint '{path}' was trained with other settings ({', '.join(changed)}); "
                          "resume with the run's own (see its training_config.json)")


class Trainer:
    """Holds the run's objects; `run()` trains to max_steps (or is interrupted)."""

    def __init__(self, config: TrainingConfig, method, *, callback: StepCallback | None = None,
                 cancel: CancelToken | None = None, components=None):
        from accelerate.utils import set_seed

        self.config, self.method, self.callback, self.cancel = config, method, callback, cancel
        self.out = output_folder(config.output_dir)     # before the model loads: a bad folder fails fast
        clean_stale_temps(self.out, depth=1)             # a killed run's half-written checkpoints, samples
        self.acc = make_accelerator(config)
        set_seed(config.seed)
        if components is None:
            components = _load(config, self.acc.device)
        self.data, self.val = load_datasets(config, components, method.uses_captions)
        self.plan = BucketPlan.of(self.data.sizes, config.batch_size, config.seed) if config.aspect_buckets else None
        if config.cache_latents and not method.uses_captions:
            raise ConfigError(f"{method.name} trains on the pixels themselves: --cache-latents does not apply")
        self.latent_cache: dict | None = {} if config.cache_latents else None
        method.setup(components, config, self.acc)
        apply_memory_options(method, config)
        self.params = method.parameters()
        if not self.params:
            raise ConfigError(f"method {method.name} has no trainable parameters")
        optimizer = make_optimizer(config, method.param_groups(config.learning_rate))
        self.lr_scheduler = make_lr_scheduler(config, optimizer)
        modules = method.trainable_modules()
        prepared = self.acc.prepare(*modules, optimizer)
        prepared = prepared if isinstance(prepared, (tuple, list)) else (prepared,)
        self.modules, self.optimizer = list(prepared[:-1]), prepared[-1]
        method.set_prepared(self.modules)
        self.ema = None
        if config.use_ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.params, decay=config.ema_decay)
        self.step, self.losses = 0, []

    # --- checkpoints --------------------------------------------------------------------------
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def state(self) -> dict:
        state = {"trainable": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "lr_scheduler": self.lr_scheduler.state_dict(), "rng": ck.rng_state(), "method": self.method.name,
                 "model": model_identity(self.config.model),
                 "options": dataclasses.asdict(self.config.options) if self.config.options is not None else {}}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.acc.scaler is not None:
            state["scaler"] = self.acc.scaler.state_dict()
        return state

    def save_checkpoint(self) -> Optional[Path]:
        path = None
        if self.acc.is_main_process:
            path = ck.save_checkpoint(self.ckpt_root, self.step, self.state(), self.config.keep_last)
        self.acc.wait_for_everyone()
        return path

    def restore(self, resume) -> None:
        path = ck.resolve_resume(resume, self.ckpt_root)
        if path is None:
            return
        step, state = ck.load_checkpoint(path)
        check_resume(path, state, self.config, self.method)
        self.method.load_state_dict(state["trainable"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.ema is not None:
            if "ema" not in state:
                raise ConfigError(f"checkpoint '{path}' has no EMA state; resume without --ema or from another one")
            self.ema.load_state_dict(state["ema"])
        if self.acc.scaler is not None and "scaler" in state:
            self.acc.scaler.load_state_dict(state["scaler"])
        ck.set_rng_state(state["rng"])
        self.step = step
        self.log(f"resumed from {path} at step {step}")

    # --- one optimizer step ---------------------------------------------------------------------
    def micro_batch(self, micro: int) -> Batch:
        """This process's share of global micro-batch `micro`."""
        bs, world, rank = self.config.batch_size, self.acc.num_processes, self.acc.process_index
        chunk = micro * world + rank
        positions = [chunk * bs + i for i in range(bs)]
        indices = self.plan.chunk(chunk) if self.plan else [sample_index(len(self.data), self.config.seed, p)
                                                             for p in positions]
        pixels, texts, seeds, latents = [], [], [], []
        for p, index in zip(positions, indices):
            seed = sample_seed(self.config.seed, p)
            item = self.data.item(index, random.Random(seed))
            pixels.append(item.pixels)
            texts.append(item.text)
            seeds.append(seed)
            if self.latent_cache is not None:
                latents.append(self.cached_latent(index, item))
        return Batch(torch.stack(pixels), texts, seeds, positions, torch.stack(latents) if latents else None)

    def cached_latent(self, index: int, item) -> torch.Tensor:
        """The VAE latent of example `index` (flipped or not), encoded once (--cache-latents,
        as kohya-ss); one image at a time, so a resumed run re-encodes exactly the same."""
        key = (index, item.flipped)
        if key not in self.latent_cache:
            self.latent_cache[key] = self.method.latents(item.pixels[None])[0]
        return self.latent_cache[key]

    def train_step(self) -> float:
        total = 0.0
        for k in range(self.config.grad_accum):
            batch = self.micro_batch(self.step * self.config.grad_accum + k)
            with self.acc.accumulate(*self.modules), self.acc.autocast():
                loss = self.method.loss(batch)
                self.acc.backward(loss)
                if self.acc.sync_gradients and self.config.max_grad_norm > 0:
                    self.acc.clip_grad_norm_(self.params, self.config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            total += self.acc.gather(loss.detach()[None]).mean().item() / self.config.grad_accum
        if not self.optimizer.step_was_skipped:
            self.lr_scheduler.step()
        self.method.after_step()
        if self.ema is not None:
            self.ema.step(self.params)
        self.step += 1
        return total

    # --- the run ----------------------------------------------------------------------------------
    def run(self, resume=None) -> TrainResult:
        self.restore(resume)
        cfg = self.config
        if self.acc.is_main_process:
            save_run_config(self.out, cfg)
        logs = LossLog(self.out / "logs", self.step) if self.acc.is_main_process else None
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"train {self.method.name}", unit="step",
                   file=sys.stderr, disable=not self.acc.is_main_process)
        for m in self.modules:
            m.train()
        try:
            while self.step < cfg.max_steps:
                if self.cancel is not None:
                    self.cancel.raise_if_cancelled()
                loss = self.train_step()
                self.losses.append(loss)
                lr = self.lr_scheduler.get_last_lr()[0]
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                self.after_step(loss, lr, logs)
        except (KeyboardInterrupt, Cancelled):
            self.log(f"interrupted at step {self.step}: saving a checkpoint")
            self.save_checkpoint()
            raise
        finally:
            bar.close()
        last = self.save_checkpoint()
        return TrainResult(self.step, self.losses, self.save_final(), last)

    def after_step(self, loss: float, lr: float, logs: LossLog | None) -> None:
        cfg, step = self.config, self.step
        metrics = {"loss": loss, "lr": lr}
        if self.val is not None and (step % cfg.validate_every == 0 or step == cfg.max_steps):
            metrics["val_loss"] = self.validation_loss()
        if logs is not None and (step % cfg.log_every == 0 or step == cfg.max_steps or "val_loss" in metrics):
            logs.add(step, loss, lr, metrics.get("val_loss"))
        if self.callback is not None:
            self.callback(StepEvent(step=step - 1, total=cfg.max_steps, metrics=metrics))
        if cfg.validation_prompts and (step % cfg.validate_every == 0 or step == cfg.max_steps):
            self.validate()
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            if logs is not None:
                logs.flush()
            self.save_checkpoint()
        elif logs is not None and step == cfg.max_steps:
            logs.flush()

    def with_ema(self, fn):
        """Run `fn()` with the EMA weights swapped in (when EMA is on)."""
        if self.ema is None:
            return fn()
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            return fn()
        finally:
            self.ema.restore(self.params)

    def validation_loss(self) -> float:
        """The mean validation loss (method.validation_loss) over the held-out images, with the
        EMA weights when EMA is on; every process computes it alike."""
        for m in self.modules:
            m.eval()
        try:
            items = [self.val.item(j, random.Random(j)) for j in range(len(self.val))]
            return self.with_ema(lambda: sum(self.method.validation_loss(it.pixels, it.text, j)
                                             for j, it in enumerate(items)) / len(items))
        finally:
            for m in self.modules:
                m.train()

    def validate(self) -> Optional[Path]:
        """A grid of samples: one row per validation prompt, `validation_images` seeds each."""
        if not self.acc.is_main_process:
            return None
        for m in self.modules:
            m.eval()
        try:
            images = self.with_ema(self.sample_validation)
        finally:
            for m in self.modules:
                m.train()
        return save_grid(images, self.out / "samples" / f"step-{self.step:08d}.png", cols=self.config.validation_images)

    def sample_validation(self):
        from ..config import GenerationConfig
        from ..pipeline import Pipeline

        cfg = self.config
        components, settings = getattr(self.method, "validation_sampling", lambda: (self.method.c, {}))()
        pipe = Pipeline(components)
        images = []
        state = torch.get_rng_state()
        with torch.no_grad():
            for prompt in cfg.validation_prompts:
                gen = GenerationConfig(prompt, **{"steps": cfg.validation_steps, **settings}, seed=cfg.seed,
                                       batch_size=cfg.validation_images)
                images += pipe.generate(gen).images
        torch.set_rng_state(state)
        return images

    def save_final(self) -> list[Path]:
        saved = []
        if self.acc.is_main_process:
            self.method.step = self.step
            saved = self.with_ema(lambda: self.method.save(self.out))
            write_model_card(self.out, self.config, self.method, saved, self.losses)
        self.acc.wait_for_everyone()
        return saved

    def log(self, msg: str) -> None:
        if self.acc.is_main_process:
            tqdm.write(f"sdlab train: {msg}", file=sys.stderr)


def _load(config: TrainingConfig, device):
    from ..models.loader import load_pipeline_components
    from ..pipeline import DEFAULT_MODEL

    device = torch.device(device)
    name = str(device) if device.type == "cuda" else device.type      # "cpu:0" -> "cpu"
    return load_pipeline_components(config.model or DEFAULT_MODEL, dtype="fp32", device=name)


def train(config: TrainingConfig, method, *, resume=None, callback: StepCallback | None = None,
          cancel: CancelToken | None = None) -> TrainResult:
    """Train `method` under `config`; `resume` is None, "latest" or a checkpoint folder (refused
    before the model loads when it cannot continue under `config`)."""
    path = ck.resolve_resume(resume, Path(config.output_dir) / "checkpoints")
    if path is not None:
        check_resume(path, ck.checkpoint_settings(path), config, method)
    return Trainer(config, method, callback=callback, cancel=cancel).run(resume)
