"""The fast path and the low-memory path, as options applied to loaded components.

Everything here uses diffusers' and torch's own switches (no hand-written kernels):
SDPA attention is the default processor of diffusers; on top of it `channels_last`,
fused QKV projections (`fuse_qkv_projections`), `torch.compile` of the UNet (CUDA graphs
with mode="reduce-overhead", whose warm-up happens on the first call and is cached by
inductor on disk), and for small GPUs attention slicing, VAE slicing/tiling and model CPU
offload through accelerate hooks. `deep_cache=N` reuses deep UNet features between full
passes (sdlab.sampling.deepcache; approximate, its quality loss is measured by
benchmarks/deepcache_quality.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
OFFLOAD_MODES = ("none", "model")


@dataclass(frozen=True)
class SpeedOptions:
    """What to switch on. `fast()` and `low_memory()` give the usual bundles."""

    channels_last: bool = False
    fuse_qkv: bool = False
    compile: str = "off"
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: str = "none"
    deep_cache: int = 0          # DeepCache-style reuse: full UNet every N calls (0 or 1: off)

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise ConfigError(f"compile must be one of {', '.join(COMPILE_MODES)}; got {self.compile!r}")
        if self.cpu_offload not in OFFLOAD_MODES:
            raise ConfigError(f"cpu_offload must be one of {', '.join(OFFLOAD_MODES)}; got {self.cpu_offload!r}")
        d = self.deep_cache
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ConfigError(f"deep_cache must be an integer >= 0 (full UNet every N calls; 0 = off), got {d!r}")

    @classmethod
    def fast(cls, compile: str = "off") -> "SpeedOptions":
        return cls(channels_last=True, fuse_qkv=True, compile=compile)

    @classmethod
    def low_memory(cls, device=None) -> "SpeedOptions":
        """Attention and VAE slicing, VAE tiling, and model CPU offload where `device` (default:
        the best available) is CUDA; elsewhere offload is left out, the models live in RAM already."""
        from .devices import resolve_device

        offload = "model" if resolve_device(device).type == "cuda" else "none"
        return cls(attention_slicing=True, vae_slicing=True, vae_tiling=True, cpu_offload=offload)


def apply_speed_options(components, options: SpeedOptions) -> None:
    """Apply `options` in place to a `Components` (sdlab.models.loader)."""
    unet = components.unet
    if options.fuse_qkv:
        unet.fuse_qkv_projections()
    if options.channels_last:
        unet.to(memory_format=torch.channels_last)
    if options.attention_slicing:
        unet.set_attention_slice("auto")
    apply_vae_speed_options(components.vae, options)
    if options.cpu_offload == "model":
        _model_cpu_offload(components)
    if options.deep_cache > 1:
        from ..sampling.deepcache import DeepCacheUNet

        components.unet = DeepCacheUNet(components.unet, options.deep_cache)
    if options.compile != "off":
        mode = None if options.compile == "default" else options.compile
        components.unet = torch.compile(unet, mode=mode, fullgraph=False)


def apply_vae_speed_options(vae, options: SpeedOptions) -> None:
    """The VAE's share of `options`: fused QKV, channels-last, sliced and tiled decoding."""
    if options.fuse_qkv:
        vae.fuse_qkv_projections()
    if options.channels_last:
        vae.to(memory_format=torch.channels_last)
    if options.vae_slicing:
        vae.enable_slicing()
    if options.vae_tiling:
        vae.enable_tiling()


def _model_cpu_offload(components) -> None:
    """Keep each model on the CPU until it runs, then move it to the GPU and the previous one
    back (accelerate's cpu_offload_with_hook, as diffusers' enable_model_cpu_offload)."""
    if not torch.cuda.is_available():
        raise ConfigError("cpu_offload='model' needs a CUDA device; on the CPU everything already lives there")
    from accelerate import cpu_offload_with_hook

    device, hook = torch.device("cuda"), None
    for name in ("text_encoder", "unet", "vae"):
        model = getattr(components, name).to("cpu")
        _, hook = cpu_offload_with_hook(model, device, prev_module_hook=hook)
    components.execution_device = device
