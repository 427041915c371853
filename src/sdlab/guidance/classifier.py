"""Classifier guidance (Dhariwal & Nichol 2021) with a noise-aware latent classifier.

The classifier reads the variance-preserving latent x_t = x / sqrt(1 + sigma^2) and the
timestep t(sigma), and predicts a label (e.g. the shape). Guidance moves the denoiser's
prediction up the log-probability of the wanted label:

    x0' = x0 + scale * w(sigma) * grad_{x_t} log p(y | x_t, t)      w = sigma^2 / (1 + sigma^2)

which for small sigma is the score shift sigma^2 * grad_x log p of the paper, bounded at the
first sigma of a zero-terminal-SNR schedule (see sdlab.guidance.loss).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from ..sampling.denoiser import sigma_batch
from .loss import check_every, check_scale, guidance_weight

DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[1] / "assets" / "shapes-classifier"


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (continuous) timesteps (Vaswani et al. 2017; DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class _Block(nn.Module):
    """GroupNorm-SiLU-conv residual block with the time embedding added in between."""

    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(nn.functional.silu(self.n1(x))) + self.t(temb)[:, :, None, None]
        return self.skip(x) + self.c2(nn.functional.silu(self.n2(h)))


class LatentClassifier(nn.Module):
    """A small noise-aware CNN over latents: (x_t, t) -> logits over `labels`."""

    def __init__(self, labels: list[str], in_channels: int = 4, channels: tuple[int, ...] = (32, 64, 128),
                 time_dim: int = 128):
        super().__init__()
        self.config = {"labels": list(labels), "in_channels": in_channels, "channels": list(channels),
                       "time_dim": time_dim}
        self.time_dim = time_dim
        self.time = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        blocks, cin = [], channels[0]
        for cout in channels:
            blocks.append(_Block(cin, cout, time_dim))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.GroupNorm(8, cin), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, len(labels)))

    @property
    def labels(self) -> list[str]:
        return self.config["labels"]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time(timestep_embedding(t, self.time_dim))
        h = self.stem(x_t)
        for i, block in enumerate(self.blocks):
            h = block(h, temb)
            if i < len(self.blocks) - 1:
                h = nn.functional.avg_pool2d(h, 2)
        return self.head(h)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        from ..io.atomic import atomic_dir

        with atomic_dir(folder) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(Path(tmp) / "model.safetensors"))
            (Path(tmp) / "config.json").write_text(json.dumps(self.config, indent=1))

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "LatentClassifier":
        from safetensors.torch import load_file

        folder = Path(folder or DEFAULT_CLASSIFIER)
        if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
            raise ModelLoadError(f"no latent classifier at '{folder}' (needs config.json and model.safetensors; "
                                 f"train one with `sdlab world train-classifier`)")
        cfg = json.loads((folder / "config.json").read_text())
        model = cls(cfg["labels"], cfg["in_channels"], tuple(cfg["channels"]), cfg["time_dim"])
        model.config.update({k: v for k, v in cfg.items() if k not in model.config})    # training, model_hash
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model.eval().requires_grad_(False)


class ClassifierGuidance:
    """`model(x, sigma, cond) -> x0` pushed toward `label` by a noise-aware classifier."""

    def __init__(self, inner, classifier: LatentClassifier, label: str, scale: float, schedule, *, every: int = 1):
        if label not in classifier.labels:
            raise ConfigError(f"unknown label {label!r} for this classifier; it knows {', '.join(classifier.labels)}")
        self.inner, self.classifier, self.schedule = inner, classifier, schedule
        self.index = classifier.labels.index(label)
        self.scale, self.every = check_scale(scale), check_every(every)
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma, cond) -> torch.Tensor:
        x0 = self.inner(x, sigma, cond)
        apply = self.calls % self.every == 0 and self.scale != 0
        self.calls += 1
        if not apply:
            return x0
        s = sigma_batch(sigma, x)
        grad = self.log_prob_grad(x, s)
        return x0 + self.scale * guidance_weight(s).to(x0) * grad.to(x0)

    def log_prob_grad(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """grad of log p(label | x_t, t) with respect to the VP latent x_t."""
        dev = next(self.classifier.parameters()).device
        x_t = (x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt()).detach().float().to(dev)
        t = self.schedule.sigma_to_t(sigma.detach().cpu()).to(dev)
        with torch.enable_grad():
            x_t.requires_grad_(True)
            logp = torch.log_softmax(self.classifier(x_t, t), dim=-1)[:, self.index]
            grad, = torch.autograd.grad(logp.sum(), x_t)
        return grad.to(x.device)


def classifier_guidance(label: str, scale: float, classifier: LatentClassifier | str | Path | None = None,
                        every: int = 1):
    """A wrapper factory for `Pipeline.generate(config, guidance=[...])`."""
    check_scale(scale)
    clf = classifier if isinstance(classifier, LatentClassifier) else LatentClassifier.load(classifier)

    def wrap(model, pipe):
        trained_on = clf.config.get("model_hash")
        if trained_on and trained_on != pipe.c.model_hash:
            import warnings

            warnings.warn(f"the classifier was trained on the latents of model {trained_on}, this model is "
                          f"{pipe.c.model_hash}: unless the two share their VAE its guidance means little "
                          "(train one for this model: sdlab world train-classifier --model MODEL)", stacklevel=2)
        return ClassifierGuidance(model, clf.to(pipe.device), label, scale, pipe.schedule, every=every)

    return wrap
