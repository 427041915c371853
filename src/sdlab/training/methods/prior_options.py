"""Prior preservation's options, torch-free (DreamBooth's and LoRA's options extend them);
the class images and the loss are prior.py."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import check_settings, setting
from ...errors import ConfigError


@dataclass(frozen=True)
class PriorOptions:
    class_prompt: str | tuple[str, ...] | None = setting(
        None, "prompt of the class for prior preservation, e.g. 'a shape'; repeat for several (class image i uses "
        "prompt i mod k); for LoRA, giving one turns the prior on")
    class_data_dir: str | None = setting(None, "class images cache; with captions (metadata.jsonl or .txt files) and "
                                         "no --class-prompt, your own captioned class images",
                                         default_text="OUTPUT/class_images")
    num_class_images: int = setting(50, "class images to generate or read", lo=1, hi=100000)
    prior_loss_weight: float = setting(1.0, "weight of the class images' loss", lo=0.0, hi=100.0)
    prior_preservation: bool = setting(True, "train without the class images' loss", flag="--no-prior-preservation")
    class_sampling_steps: int = setting(25, lo=1, hi=1000, flag=None)

    def __post_init__(self):
        if isinstance(self.class_prompt, list):
            object.__setattr__(self, "class_prompt", tuple(self.class_prompt))
        prompts = self.class_prompts
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ConfigError(f"class_prompt must be a non-empty string or a list of them, got {self.class_prompt!r}")
        if self.prior_preservation and not prompts and not self.class_data_dir:
            raise ConfigError("prior preservation needs class_prompt (e.g. --class-prompt 'a shape'), or a "
                              "captioned --class-data-dir, or turn prior preservation off")
        check_settings(self)

    @property
    def class_prompts(self) -> tuple[str, ...]:
        if self.class_prompt is None:
            return ()
        return (self.class_prompt,) if isinstance(self.class_prompt, str) else tuple(self.class_prompt)
