"""General scores on features: CLIP score (Hessel et al. 2021), image-image similarity,
and the Frechet distance between two feature sets (Heusel et al. 2017, FID's formula)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from ..errors import ConfigError


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean 100 * max(cos, 0) of matching image/text rows (unit-norm features)."""
    if image_features.shape != text_features.shape:
        raise ConfigError("clip_score needs one text per image")
    return float((100 * (image_features * text_features).sum(-1).clamp(min=0)).mean())


def image_similarity(a: torch.Tensor, b: torch.Tensor, paired: bool = False) -> float:
    """Mean cosine similarity: row i with row i (`paired`), else every a with every b."""
    if paired:
        return float((a * b).sum(-1).mean())
    return float((a @ b.T).mean())


def diversity(features: torch.Tensor) -> float:
    """1 - mean cosine similarity between different samples (unit-norm rows): 0 when every
    sample looks alike; DreamBooth's DIV (Ruiz et al. 2023) with encoder features for LPIPS."""
    n = len(features)
    if n < 2:
        raise ConfigError("diversity needs at least 2 samples")
    sims = features @ features.T
    return float(1 - (sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature sets."""
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("the Frechet distance needs at least 2 images in each set")
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():                     # singular product: regularise (as pytorch-fid)
        eps = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))
