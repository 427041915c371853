"""Prompt-to-prompt edits as one call (Hertz et al. 2022):

    from sdlab.attention.edit import edit
    r = edit(pipe, "a red circle on a blue background", "a red square on a blue background", seed=3)
    r.source_image, r.target_image

Source and target are sampled together as one batch [source, target] from the source seed's
noise (every row the same noise, ancestral noise included), with classifier-free guidance, while
a PromptToPromptController edits the target's attention (sdlab.attention.p2p).
Modes: "replace" (word swap, equal token counts), "refine" (added words, aligned tokens),
"reweight" (the target, by default the source prompt, with `reweight={word: factor}`); a
reweight can be added to any mode, and `blend=[words]` adds a local blend.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional

import torch
from PIL import Image

from ..callbacks import combine
from ..config import GenerationConfig
from ..errors import ConfigError
from .align import PromptTokens, prompt_tokens, refine_mapping, replace_mapping
from .options import MAX_WEIGHT, MODES, EditConfig  # noqa: F401  (declared torch-free, for `sdlab edit --help`)
from .p2p import LocalBlend, PromptToPromptController


@dataclass
class EditResult:
    """The source and edited images of one seed, and what was done."""

    source_image: Image.Image
    target_image: Image.Image
    seed: int
    source_prompt: str
    target_prompt: str
    settings: dict = field(default_factory=dict)
    mask: Optional[torch.Tensor] = None      # the last local-blend mask (1, 1, h, w), if any


def _blend_positions(src: PromptTokens, tgt: PromptTokens, words) -> tuple[list[int], list[int]]:
    """Token positions of the blend words in each prompt; each word must be in at least one."""
    out: tuple[list[int], list[int]] = ([], [])
    for word in words:
        hits = []
        for side, p in enumerate((src, tgt)):
            try:
                hits.append((side, p.positions(word)))
            except ConfigError:
                pass
        if not hits:
            raise ConfigError(f"blend word {word!r} is in neither prompt ({src.prompt!r}, {tgt.prompt!r})")
        for side, pos in hits:
            out[side].extend(pos)
    return out


def _token_fractions(tgt: PromptTokens, cfg: EditConfig) -> torch.Tensor:
    """Cross-replace fraction per target token: cfg.cross_replace, or the word's own."""
    fractions = torch.full((len(tgt.ids),), cfg.cross_replace)
    for word, fraction in cfg.word_cross_replace:
        fractions[tgt.positions(word)] = fraction
    return fractions


def _pair_tables(tokenizer, source: str, target: str, cfg: EditConfig):
    """(mapper, alphas, equalizer, blend positions, per-token cross fractions) of one pair."""
    src, tgt = prompt_tokens(tokenizer, source), prompt_tokens(tokenizer, target)
    mapping = replace_mapping if cfg.mode == "replace" else refine_mapping
    mapper, alphas = mapping(src, tgt)
    equalizer = torch.ones(len(tgt.ids))
    for word, factor in cfg.reweight:
        equalizer[tgt.positions(word)] = factor
    positions = _blend_positions(src, tgt, cfg.blend) if cfg.blend else None
    return mapper, alphas, equalizer, positions, _token_fractions(tgt, cfg)


def build_controller(tokenizer, sources, targets, cfg: EditConfig, steps: int, *,
                     guidance: bool = True) -> PromptToPromptController:
    """The prompt-to-prompt controller for `steps` sampling steps and the pairs (sources[i],
    targets[i]) (a string each for one pair), sampled as rows [sources, targets]."""
    from ..text.extra_networks import strip_lora_tags

    sources = [strip_lora_tags(p) for p in ([sources] if isinstance(sources, str) else sources)]
    targets = [strip_lora_tags(p) for p in ([targets] if isinstance(targets, str) else targets)]
    if not sources or len(sources) != len(targets):
        raise ConfigError(f"need as many target prompts as source prompts, got {len(sources)} and {len(targets)}")
    mappers, alphas, equalizers, positions, fractions = zip(*(_pair_tables(tokenizer, s, t, cfg)
                                                              for s, t in zip(sources, targets)))
    blend = None
    if cfg.blend:
        blend = LocalBlend(positions, cfg.blend_threshold, start=int(cfg.blend_start * steps))
    return PromptToPromptController(torch.stack(mappers), torch.stack(alphas),
                                    cross_steps=int(cfg.cross_replace * steps),
                                    self_steps=int(cfg.self_replace * steps),
                                    equalizer=torch.stack(equalizers) if cfg.reweight else None,
                                    self_max_queries=cfg.self_max_queries, blend=blend, cfg=guidance,
                                    token_steps=(torch.stack(fractions) * steps).floor()
                                    if cfg.word_cross_replace else None)


def edit_batch(pipe, sources, targets, config: GenerationConfig, cfg: EditConfig, *, seeds=None,
               callback=None, cancel=None) -> list[EditResult]:
    """k edits sampled as one batch [sources, targets]; pair i uses seeds[i] (default config.seed + i)
    for both its rows, so each source row is the plain generation of its prompt and seed."""
    sources, targets, config = list(sources), list(targets), pipe.resolved(config)
    controller = build_controller(pipe.c.tokenizer, sources, targets, cfg, config.steps,
                                  guidance=config.cfg_scale != 1)
    seeds = [config.seed + i for i in range(len(sources))] if seeds is None else list(seeds)
    if len(seeds) != len(sources):
        raise ConfigError(f"need one seed per edit pair ({len(sources)}), got {len(seeds)}")
    width, height = pipe.size(config)
    # a pair's rows share its seed: the same starting and ancestral noise, drawn in the order a
    # plain generation draws them, so the source row is the plain source image
    with pipe.prompt_loras(*sources, *targets):
        images = pipe.sample_images(config, seeds + seeds, callback=combine([controller.step_callback, callback]),
                                    cancel=cancel, attention=controller, cond=pipe.encode_prompt(sources + targets, config.clip_skip),
                                    uncond=pipe.encode_prompt([config.negative_prompt], config.clip_skip))
    k = len(sources)
    mask = controller.blend.mask if controller.blend is not None else None
    out = []
    for i, (source, target, seed) in enumerate(zip(sources, targets, seeds)):
        settings = {**pipe.settings_for(replace(config, prompt=source), seed, width, height),
                    "edit": _edit_dict(cfg), "target_prompt": target}
        out.append(EditResult(images[i], images[k + i], seed, source, target, settings,
                              None if mask is None else mask[i:i + 1]))
    return out


def edit(pipe, source: str, target: Optional[str] = None, *, config: Optional[GenerationConfig] = None,
         callback=None, cancel=None, **options) -> EditResult:
    """Sample `source` and its edit `target` together (see module doc).

    config: sampling settings (prompt ignored; default GenerationConfig(source)); the other
    keywords are EditConfig fields, or `edit=EditConfig(...)`; seed/steps/cfg_scale/sampler/
    negative_prompt/width/height/clip_skip may also be given directly.
    """
    gen_keys = {"seed", "steps", "cfg_scale", "sampler", "negative_prompt", "width", "height", "clip_skip"}
    gen_opts = {k: options.pop(k) for k in list(options) if k in gen_keys}
    if config is not None and gen_opts:
        raise ConfigError(f"give sampling settings either in config or as keywords, not both ({', '.join(gen_opts)})")
    cfg = options.pop("edit", None)
    if cfg is not None and options:
        raise ConfigError(f"give edit settings either as edit=EditConfig(...) or as keywords, not both "
                          f"({', '.join(options)})")
    unknown = set(options) - {f.name for f in fields(EditConfig)}
    if unknown:
        raise ConfigError(f"unknown edit option(s) {', '.join(sorted(unknown))}; allowed: "
                          f"{', '.join(sorted(gen_keys | {f.name for f in fields(EditConfig)}))}, config, edit")
    cfg = EditConfig(**options) if cfg is None else cfg
    if not isinstance(cfg, EditConfig):
        raise ConfigError(f"edit must be an EditConfig, got {type(cfg).__name__}")
    config = GenerationConfig(prompt=source, **gen_opts) if config is None else config
    return edit_batch(pipe, [source], [source if target is None else target], config, cfg,
                      seeds=[config.seed], callback=callback, cancel=cancel)[0]


def _edit_dict(cfg: EditConfig) -> dict:
    from dataclasses import asdict

    d = asdict(cfg)
    d["reweight"] = dict(cfg.reweight)
    d["blend"] = list(cfg.blend)
    return d
