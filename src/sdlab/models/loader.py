"""Load SD components from a local diffusers folder or a single-file checkpoint; never download."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from sdlab.errors import ModelLoadError
from sdlab.models import checkpoint as ckpt
from sdlab.models import single_file as sf
from sdlab.models.config_check import UNET_FIELDS, VAE_FIELDS, check_config
from sdlab.models.devices import resolve_device, resolve_dtype
from sdlab.models.hashing import model_hash as _hash
from sdlab.models.tokenizer import BPE_FILE, clip_tokenizer

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class Components:
    """The parts of a Stable Diffusion model, ready to sample with."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    prediction_type: str
    name: str
    source: Path
    family: str = "custom"  # "sd1", "sd2" or "custom" (e.g. the shipped shapes-world model)
    extra: dict = field(default_factory=dict)

    @functools.cached_property
    def model_hash(self) -> str:
        """A1111 short hash of the source file (computed on first use, not stored on disk)."""
        return _hash(self.source)

    execution_device: Optional[torch.device] = None  # set by CPU offload (models.speed)

    @property
    def device(self) -> torch.device:
        return self.execution_device or next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def make_scheduler(self, cls=None):
        """A diffusers scheduler (``cls`` or the configured class) built from scheduler_config."""
        import diffusers

        if cls is None:
            cls = getattr(diffusers, self.scheduler_config.get("_class_name", ""), None) \
                or diffusers.DDIMScheduler
        return cls.from_config(self.scheduler_config)

    def to_pipeline(self, scheduler=None):
        """A plain diffusers ``StableDiffusionPipeline`` sharing these modules."""
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=scheduler or self.make_scheduler(), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)


def diffusers_folder_of(path: Path) -> Path | None:
    """The diffusers model folder a component weight file (`unet/diffusion_pytorch_model.*`) sits in."""
    folder = path.parent.parent
    return folder if path.is_file() and (folder / "model_index.json").is_file() else None


def load_pipeline_components(path: str | Path, *, dtype=None, device=None,
                             prediction_type: str | None = None, config: str | Path | None = None,
                             tokenizer: str | Path | None = None, vae: str | Path | None = None) -> Components:
    """Load a diffusers folder, or a SD 1.x/2.x ``.safetensors``/``.ckpt`` single file.

    ``prediction_type`` ("epsilon"/"v_prediction") overrides detection; ``config`` is a diffusers
    folder whose configs replace the shipped SD 1.5/2.1 ones (single files only); ``tokenizer``
    is a tokenizer folder to use instead of the model's own; ``vae`` a VAE to use instead of the
    model's own (sdlab.models.vae_file: a folder or a single VAE file).
    """
    from .shipped import SHIPPED, model_location

    p = model_location(path)
    if not p.exists():
        raise ModelLoadError(f"model path '{p}' does not exist (give a diffusers folder, a .safetensors/.ckpt file "
                             f"or a shipped model's name: {', '.join(SHIPPED)})")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    pred = ckpt.normalize_prediction_type(prediction_type) if prediction_type else None
    if diffusers_folder_of(p) is not None:
        raise ModelLoadError(f"'{p}' holds only the {p.parent.name} of the diffusers folder '{p.parent.parent}'; "
                             "give the folder")
    if p.is_dir():
        parts = _load_folder(p, dt, tokenizer)
        if pred:
            parts.scheduler_config["prediction_type"] = parts.prediction_type = pred
    else:
        parts = _load_single_file(p, dt, dev, pred, config, tokenizer)
    if vae is not None:
        from sdlab.models.vae_file import load_vae

        parts.vae, parts.extra["vae"] = load_vae(vae, parts.vae, dt)
    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.to(dev).eval()
    return parts


def _class_for(index: dict, name: str, default: str):
    """The class model_index.json names for a component (diffusers or transformers)."""
    import diffusers
    import transformers

    entry = index.get(name)
    cls_name = entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[1] else default
    library = transformers if name in ("text_encoder", "tokenizer") else diffusers
    cls = getattr(library, cls_name, None)
    if cls is None:
        raise ModelLoadError(f"model_index.json names unknown class '{cls_name}' for '{name}'")
    base = {"tokenizer": transformers.PreTrainedTokenizerBase, "text_encoder": transformers.PreTrainedModel}.get(
        name, diffusers.ModelMixin)
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls is base:    # AutoModel would recurse forever
        raise ModelLoadError(f"model_index.json names '{cls_name}' for '{name}': it must name the {name}'s own "
                             f"class (a {base.__module__.split('.')[0]} {base.__name__} such as {default}), "
                             "not an Auto class or a pipeline")
    return cls


def _load_folder(p: Path, dtype: torch.dtype, tokenizer_path) -> Components:
    from .generation_defaults import read_generation_defaults

    index_file = p / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(f"'{p}' is not a diffusers model folder: model_index.json is missing")
    index = sf.read_json(index_file)
    needed = [s for s in SUBFOLDERS if not (s == "tokenizer" and tokenizer_path)]
    for sub in needed:
        if not (p / sub).is_dir():
            raise ModelLoadError(f"model folder '{p}' is missing its '{sub}/' subfolder")
    tok = _load_tokenizer(tokenizer_path or p / "tokenizer", index)
    for sub, fields in (("unet", UNET_FIELDS), ("vae", VAE_FIELDS)):
        if (p / sub / "config.json").is_file():
            check_config(sf.read_json(p / sub / "config.json"), p / sub / "config.json", fields)
    unet = _from_pretrained(_class_for(index, "unet", "UNet2DConditionModel"), p, "unet", dtype)
    vae = _from_pretrained(_class_for(index, "vae", "AutoencoderKL"), p, "vae", dtype)
    text = _from_pretrained(_class_for(index, "text_encoder", "CLIPTextModel"), p,
                            "text_encoder", dtype)
    sched = sf.read_json(p / "scheduler" / "scheduler_config.json")
    cross = getattr(unet.config, "cross_attention_dim", None)
    family = {768: "sd1", 1024: "sd2"}.get(cross, "custom") if text.config.vocab_size == 49408 \
        else "custom"
    return Components(unet, vae, text, tok, dict(sched), sched.get("prediction_type", "epsilon"),
                      p.name, p, family, extra={"generation_defaults": read_generation_defaults(p)})


def _from_pretrained(cls, p: Path, sub: str, dtype: torch.dtype):
    is_transformers = cls.__module__.startswith("transformers")
    kwargs = {"dtype": dtype} if is_transformers else {"torch_dtype": dtype}
    try:
        model, info = cls.from_pretrained(str(p / sub) if is_transformers else str(p),
                                          **({} if is_transformers else {"subfolder": sub}),
                                          local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as exc:  # library errors vary: OSError, ValueError, SafetensorError...
        reason = ckpt.first_line(exc)
        raise ModelLoadError(f"cannot load {sub} from '{p / sub}': {reason}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:     # the library would only warn and leave these weights random
        raise ModelLoadError(f"cannot load {sub} from '{p / sub}': {len(missing)} weights are missing from its "
                             f"file (e.g. {missing[0]}); a file written for another version of "
                             f"{'transformers' if is_transformers else 'diffusers'}?")
    return model


def _load_tokenizer(path, index: dict | None = None):
    path = Path(path)
    cls = _class_for(index or {}, "tokenizer", "CLIPTokenizer")
    try:
        return cls.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        reason = ckpt.first_line(exc)
        raise ModelLoadError(f"cannot load tokenizer from '{path}': {reason}") from exc


def _load_single_file(p: Path, dtype, dev, pred, config, tokenizer_path) -> Components:
    state = ckpt.read_state_dict(p)
    family = ckpt.detect_family(state, p)
    if config is None:
        ckpt.check_cross_dim(state, family, p)
    guessed = pred or ckpt.sidecar_prediction_type(p)
    if config is not None:
        cfg_dir = Path(config)
        if not (cfg_dir / "unet" / "config.json").is_file():
            raise ModelLoadError(f"config folder '{cfg_dir}' has no unet/config.json")
    else:
        cfg_dir = sf.shipped_config_dir(family, guessed or "epsilon")
    tok = _single_file_tokenizer(cfg_dir, tokenizer_path, family)  # fail fast, before weights
    unet_cfg = sf.read_json(cfg_dir / "unet" / "config.json")
    unet = _build(sf.build_unet, state, unet_cfg, cfg_dir / "unet" / "config.json", UNET_FIELDS, dtype)
    vae = _build(sf.build_vae, state, sf.read_json(cfg_dir / "vae" / "config.json"), cfg_dir / "vae" / "config.json",
                 VAE_FIELDS, dtype)
    text = sf.build_text_encoder(state, cfg_dir / "text_encoder", family, dtype)
    del state
    if guessed is None and family == "sd2" and config is None:
        unet.to(dev)
        guessed = "v_prediction" if ckpt.probe_v_prediction(unet, unet_cfg["cross_attention_dim"]) \
            else "epsilon"
        if guessed == "v_prediction":  # same weights layout; take the 768-v configs
            cfg_dir = sf.shipped_config_dir(family, guessed)
            _apply_config(unet, sf.read_json(cfg_dir / "unet" / "config.json"))
            _apply_config(vae, sf.read_json(cfg_dir / "vae" / "config.json"))
    sched = sf.read_json(cfg_dir / "scheduler" / "scheduler_config.json")
    pred_type = guessed or sched.get("prediction_type", "epsilon")
    sched["prediction_type"] = pred_type
    return Components(unet, vae, text, tok, sched, pred_type, p.stem, p, family,
                      {"config_dir": str(cfg_dir)})


def _build(build, state: dict, config: dict, path: Path, fields: dict, dtype):
    """`build(state, config, dtype)` after checking `config`; an error names the config file."""
    check_config(config, path, fields)
    try:
        return build(state, config, dtype)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers' constructors raise TypeError, ValueError, ZeroDivisionError...
        raise ModelLoadError(f"cannot build a model from '{path}': {ckpt.first_line(exc)}") from exc


def _apply_config(model, config: dict) -> None:
    """Switch between configs that differ only in sizes/flags that hold no weights."""
    keys = ("sample_size", "upcast_attention")
    model.register_to_config(**{k: config[k] for k in keys if k in config})
    if "upcast_attention" in config:
        for module in model.modules():
            if hasattr(module, "upcast_attention"):
                module.upcast_attention = config["upcast_attention"]


def _single_file_tokenizer(cfg_dir: Path, tokenizer_path, family: str):
    """Tokenizer: explicit folder, the config's own, or CLIP BPE (SD 2.x pads with "!")."""
    if tokenizer_path is not None:
        return _load_tokenizer(tokenizer_path)
    tok_dir = cfg_dir / "tokenizer"
    if (tok_dir / "vocab.json").is_file() or (tok_dir / "tokenizer.json").is_file():
        return _load_tokenizer(tok_dir)
    if not BPE_FILE.is_file():
        raise ModelLoadError(f"no CLIP vocabulary found at '{BPE_FILE}'; pass tokenizer=PATH "
                             "(--tokenizer) pointing at a CLIPTokenizer folder")
    tok_cfg = sf.read_json(tok_dir / "tokenizer_config.json") if \
        (tok_dir / "tokenizer_config.json").is_file() else {}
    default_pad = "!" if family == "sd2" else "<|endoftext|>"
    return clip_tokenizer(pad_token=tok_cfg.get("pad_token", default_pad),
                          model_max_length=tok_cfg.get("model_max_length", 77))
