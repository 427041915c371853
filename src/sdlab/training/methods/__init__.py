"""Personalization methods on the shared loop; `build_method(name, cli_args)` makes one."""

from __future__ import annotations

from ...errors import ConfigError


def build_method(name: str, args: dict):
    """(method, defaults) where defaults has learning_rate, weight_decay and options."""
    if name == "lora":
        from .lora import LoRA, LoraOptions

        prior = bool(args.get("class_prompt") or args.get("class_data_dir"))
        opts = LoraOptions(rank=args["rank"], alpha=args["alpha"], text_encoder=args["train_text_encoder"],
                           targets=args.get("targets") or "attention", lr_ratio_b=args.get("lr_ratio_b") or 1.0,
                           new_token=args.get("new_token"), new_token_init=args.get("new_token_init") or "shape",
                           new_token_vectors=args.get("new_token_vectors") or 1,
                           new_token_lr=args.get("new_token_lr"),
                           prior_preservation=prior, **_prior_args(args))
        return LoRA(opts), {"learning_rate": 1e-4, "weight_decay": 1e-2, "options": opts}
    if name == "textual-inversion":
        from .textual_inversion import TextualInversion, TIOptions

        opts = TIOptions(placeholder=args["placeholder"], initializer=args["initializer"],
                         num_vectors=args["num_vectors"], templates=args["templates"],
                         max_norm=args.get("max_norm"))
        return TextualInversion(opts), {"learning_rate": 5e-3, "weight_decay": 0.0, "options": opts}
    if name == "dreambooth":
        from .dreambooth import DreamBooth, DreamBoothOptions

        opts = DreamBoothOptions(prior_preservation=not args["no_prior_preservation"],
                                 text_encoder=args["train_text_encoder"], **_prior_args(args))
        return DreamBooth(opts), {"learning_rate": 5e-6, "weight_decay": 1e-2, "options": opts}
    if name == "finetune":
        from .finetune import FineTune, FineTuneOptions

        opts = FineTuneOptions(freeze_text_encoder=not args["train_text_encoder"],
                               train_vae_decoder=bool(args.get("train_vae_decoder")))
        return FineTune(opts), {"learning_rate": 1e-5, "weight_decay": 1e-2, "options": opts}
    if name == "vae-decoder":
        from .vae_decoder import VaeDecoder

        method = VaeDecoder()
        return method, {"learning_rate": 1e-4, "weight_decay": 0.0, "options": method.options}
    raise ConfigError(f"unknown training method {name!r}; use textual-inversion, dreambooth, lora, finetune "
                      "or vae-decoder")


def _prior_args(args: dict) -> dict:
    """PriorOptions fields from the CLI's prior-preservation flags; absent ones keep PriorOptions' defaults."""
    keys = ("class_prompt", "class_data_dir", "num_class_images", "prior_loss_weight")
    return {k: args[k] for k in keys if args.get(k) is not None}
