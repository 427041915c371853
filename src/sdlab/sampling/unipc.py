"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), the B(h) = e^h - 1 variant ("bh2") in data-prediction form, as diffusers'
UniPCMultistepScheduler runs it by default (solver_order 2, lower_order_final).

Each step predicts x_{i+1} with the multistep UniP of order p from the last p predictions, and the
next step first corrects it with UniC, which uses the prediction at the predicted point: the model
call the next step makes anyway, so the corrector costs no evaluation. The order warms up from 1 and
is 1 on the last step, which returns the denoised prediction. In sigma form every update is
`ddim_step` (DPM-Solver++(1)) plus (1 - sigma'/sigma) times a combination of divided differences.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..callbacks import CancelToken, StepCallback
from .noise import Generators
from .steps import Denoise, Sigmas, call, ddim_step, floats, report


def bh2_coefficients(h: float, order: int) -> np.ndarray:
    """b_k = k! h phi_(k+1)(h) / B(h), k = 1..order, with B(h) = e^h - 1 taken at -h (data prediction)."""
    hh = -h
    b_h = math.expm1(hh)
    phi, factorial, out = math.expm1(hh) / hh - 1, 1, []
    for k in range(1, order + 1):
        out.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1 / factorial
    return np.array(out)


def uni_update(x: torch.Tensor, ds: list[torch.Tensor], lams: list[float], sigma: float, sigma_next: float,
               order: int, denoised_next: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One UniP step (denoised_next None) or UniC correction of the step sigma -> sigma' from x, with the
    predictions ds (newest first, ds[0] at sigma) at lambdas lams = -log(sigma) (same order). UniP of order
    p uses ds[:p] (rho = 1/2 at p = 2, as diffusers); UniC of order p uses ds[:p] and denoised_next."""
    h = math.log(sigma / sigma_next)
    rks = np.array([(lams[k] - lams[0]) / h for k in range(1, order)] + [1.0])
    diffs = [(ds[k] - ds[0]) / rks[k - 1] for k in range(1, order)]
    b = bh2_coefficients(h, order)
    R = np.stack([rks**k for k in range(order)])
    if denoised_next is None:
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]) if order > 2 else []
    else:
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        diffs = diffs + [denoised_next - ds[0]]
    out = ddim_step(x, ds[0], sigma, sigma_next)
    return out + sum(float(r) * d for r, d in zip(rhos, diffs)) * (1 - sigma_next / sigma) if diffs else out


@torch.no_grad()
def sample_unipc(model: Denoise, x: torch.Tensor, sigmas: Sigmas, *, extra_args: Optional[dict] = None,
                 callback: Optional[StepCallback] = None, cancel: Optional[CancelToken] = None,
                 generator: Generators = None, order: int = 2) -> torch.Tensor:
    """UniPC-bh2 of order `order` (2: diffusers' default, the paper's choice for guided sampling)."""
    s = floats(sigmas)
    ds: list[torch.Tensor] = []       # predictions, newest first
    lams: list[float] = []            # their -log(sigma)
    x_prev, order_prev = x, 0
    for i in range(len(s) - 1):
        denoised = call(model, x, s[i], extra_args)
        if ds:   # UniC: correct x_i with the prediction at it (which stays the prediction of x_i)
            x = uni_update(x_prev, ds, lams, s[i - 1], s[i], order_prev, denoised)
        ds, lams = [denoised, *ds][:order], [-math.log(s[i]), *lams][:order]
        if s[i + 1] == 0:
            x_prev, x = x, denoised
        else:
            order_prev = min(order, len(s) - 1 - i, len(ds))
            x_prev, x = x, uni_update(x, ds, lams, s[i], s[i + 1], order_prev)
        report(i, len(s) - 1, s[i], x, denoised, callback, cancel)
    return x
