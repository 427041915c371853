"""Image (and text) features from a local encoder; default the shipped shapes-world CLIP pair.

CLIP (Radford et al. 2021) folders give both towers; any other local transformers vision
model folder (e.g. DINO, Caron et al. 2021) gives image features from its pooled output.
Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ModelLoadError

SHIPPED_CLIP = Path(__file__).resolve().parents[1] / "assets" / "shapes-clip"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Encoder:
    """`images(list[PIL]) -> (N, D)` and, for CLIP, `texts(list[str]) -> (N, D)` (unit norm)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        import json

        from transformers import AutoModel, CLIPModel, CLIPTokenizer

        self.path = Path(path or SHIPPED_CLIP)
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise ModelLoadError(f"feature encoder '{self.path}' is not a local transformers model folder")
        kind = json.loads(cfg_file.read_text()).get("model_type")
        self.is_clip = kind == "clip"
        if self.is_clip:
            self.model = CLIPModel.from_pretrained(self.path).to(device).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(self.path)
            self.size = self.model.config.vision_config.image_size
            # the shipped pair takes [-1, 1] pixels (sdlab.recipe.clip); other CLIPs OpenAI's stats
            shipped = self.path.resolve() == SHIPPED_CLIP.resolve()
            self.mean, self.std = ((0.5,) * 3, (0.5,) * 3) if shipped else \
                ((0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758))
        else:
            self.model = AutoModel.from_pretrained(self.path).to(device).eval()
            self.tokenizer = None
            self.size = int(getattr(self.model.config, "image_size", 224))
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.device = device

    def _pixels(self, images) -> torch.Tensor:
        arr = np.stack([np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC),
                                   dtype=np.float32) / 255.0 for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2)
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return ((x - mean) / std).to(self.device)

    @torch.no_grad()
    def images(self, images, batch: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch):
            x = self._pixels(images[i:i + batch])
            if self.is_clip:
                f = self.model.get_image_features(pixel_values=x)
            else:
                o = self.model(pixel_values=x)
                f = o.pooler_output if getattr(o, "pooler_output", None) is not None else o.last_hidden_state.mean(1)
            out.append(_tensor(f).float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        if not self.is_clip:
            raise ModelLoadError(f"'{self.path}' has no text tower; text-image scores need a CLIP folder")
        ids = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        f = self.model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
        return torch.nn.functional.normalize(_tensor(f).float().cpu(), dim=-1)


def _tensor(out) -> torch.Tensor:
    """transformers 5 may return a model output where 4.x returned a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected feature output {type(out).__name__}")
