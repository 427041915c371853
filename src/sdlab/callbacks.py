"""One callback contract for progress, previews, trajectories and cancellation.

Every long loop in sdlab (sampling, training) reports a `StepEvent` after each step to a
callback `fn(event) -> None`. Cancellation goes through a `CancelToken` that the loop checks
between steps; a callback may also raise `sdlab.errors.Cancelled` itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from .errors import Cancelled


@dataclass
class StepEvent:
    """What a loop reports after step `step` (0-based) of `total`."""

    step: int
    total: int
    sigma: Optional[float] = None      # noise level of the step just taken (sampling)
    x: Any = None                      # current latent x_t (sampling) or None
    denoised: Any = None               # predicted clean latent x0 at this step (sampling)
    metrics: dict = field(default_factory=dict)  # e.g. {"loss": 0.1} for training


StepCallback = Callable[[StepEvent], None]


class CancelToken:
    """A thread-safe flag: `cancel()` from anywhere, loops call `raise_if_cancelled()`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by request")


def combine(callbacks: Iterable[Optional[StepCallback]]) -> Optional[StepCallback]:
    """One callback that calls each non-None callback in order."""
    fns = [c for c in callbacks if c is not None]
    if not fns:
        return None

    def _all(event: StepEvent) -> None:
        for fn in fns:
            fn(event)

    return _all
