"""ControlNet residuals inside the one sampling loop: `ControlledUNet` is called like the UNet
(by sdlab.sampling.Denoiser) and, before calling it, runs each active ControlNet on the same
scaled latents, timestep and prompt, summing their residuals into the UNet's skip connections
(`down_block_additional_residuals`, `mid_block_additional_residual`) as diffusers'
StableDiffusionControlNetPipeline and MultiControlNetModel do. A control whose weight is 0 or that
is off at this step is not run at all, so the UNet call is then the uncontrolled one, bit for bit.

Guess mode: inside a batched classifier-free guidance call (sdlab.guidance.cfg.UNCOND_ROWS) the
ControlNet sees the conditional rows only and the unconditional rows get zero residuals."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..guidance.cfg import UNCOND_ROWS
from ..sampling.denoiser import Denoiser, WrappedUNet
from .spec import LoadedControl, active


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """`t` (1 or n rows) as n rows."""
    return t if t.shape[0] == n else t.expand(n, *t.shape[1:])


class ControlledUNet(WrappedUNet):
    """`unet(sample, t, encoder_hidden_states=...)` with the ControlNets' residuals added.

    `step` / `total` say where the loop is (for each control's start / end); `on_step`, given to
    the sampler as a callback, advances them."""

    def __init__(self, unet, controls: Sequence[LoadedControl], total: int):
        super().__init__(unet)
        self.controls = list(controls)
        self.step, self.total = 0, max(int(total), 1)

    def on_step(self, event) -> None:
        """A StepCallback: the sampler finished step `event.step` of `event.total`."""
        self.step, self.total = event.step + 1, max(int(event.total), 1)

    def scales(self) -> list[float]:
        """Each control's weight at the current step (0 when it is off)."""
        return [lc.control.scale if active(self.step, self.total, lc.control.start, lc.control.end) else 0.0
                for lc in self.controls]

    def residuals(self, sample: torch.Tensor, timestep, hidden: Optional[torch.Tensor]):
        """(down residuals, mid residual) summed over the active controls, or (None, None)."""
        down = mid = None
        for lc, scale in zip(self.controls, self.scales()):
            if scale == 0:
                continue
            d, m = self._one(lc, scale, sample, timestep, hidden)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        return down, mid

    def _one(self, lc: LoadedControl, scale: float, sample, timestep, hidden):
        skip = UNCOND_ROWS.get() if lc.guess else 0
        net, n = lc.net, sample.shape[0]
        t = timestep[skip:] if torch.is_tensor(timestep) and timestep.ndim else timestep
        h = None if hidden is None else _rows(hidden, n)[skip:].to(net.dtype)
        image = _rows(lc.image.to(sample.device, net.dtype), n - skip)
        down, mid = net(sample[skip:].to(net.dtype), t, encoder_hidden_states=h, controlnet_cond=image,
                        conditioning_scale=scale, guess_mode=lc.guess, return_dict=False)
        if skip:
            down = [torch.cat([r.new_zeros((skip, *r.shape[1:])), r]) for r in down]
            mid = torch.cat([mid.new_zeros((skip, *mid.shape[1:])), mid])
        return [r.to(self.dtype) for r in down], mid.to(self.dtype)

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states=None, **kwargs):
        down, mid = self.residuals(sample, timestep, encoder_hidden_states)
        if down is not None:
            kwargs.update(down_block_additional_residuals=down, mid_block_additional_residual=mid)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)


def controlled_denoiser(base: Denoiser, controls: Sequence[LoadedControl], total: int) -> tuple[Denoiser, ControlledUNet]:
    """`base`'s UNet with the controls applied, as a Denoiser; and the ControlledUNet (its
    `on_step` must be called after each sampler step)."""
    unet = ControlledUNet(base.unet, controls, total)
    return Denoiser(unet, base.schedule), unet
