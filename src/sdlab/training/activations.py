"""Device-independent activation accounting: the bytes autograd keeps for backward.

During one forward pass, `torch.autograd.graph.saved_tensors_hooks` sees every tensor an
op saves for its backward. Counting their storages (once each, parameters and buffers left
out) gives the activation memory of a training step on any device, CPU included.

Gradient checkpointing (Chen et al. 2016) is accounted, not run: the checkpoint function of
each checkpointed block is swapped for a recorder that keeps the block's inputs (what a
real checkpoint keeps) and counts the block's own saved tensors separately. The peak is then
everything saved outside checkpointed blocks + every block's inputs + the largest block
(the one being recomputed in backward): Chen et al.'s O(inputs + one segment) bound.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


def _key(t: torch.Tensor):
    st = t.untyped_storage()
    return (t.device.type, st.data_ptr(), st.nbytes())


_VIEWS = {"TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0", "UnsafeViewBackward0",
          "ExpandBackward0", "UnsqueezeBackward0", "SqueezeBackward0", "SqueezeBackward1", "AsStridedBackward0",
          "SliceBackward0", "SelectBackward0", "AliasBackward0"}


def _unpack(t):
    return t


@dataclass
class ActivationCount:
    outside: int = 0          # saved outside checkpointed blocks
    kept_inputs: int = 0      # inputs of checkpointed blocks (kept by the checkpoint)
    largest_block: int = 0    # the largest checkpointed block (recomputed in backward)
    blocks: int = 0           # checkpointed blocks seen
    all_saved: int = 0        # everything, as if nothing were checkpointed
    weight_copies: int = 0    # low-precision casts of trainable weights (not in the above)

    @property
    def peak(self) -> int:
        """Activation bytes live at the peak of the step."""
        return self.outside + self.kept_inputs + self.largest_block


class SavedTensorCounter:
    """Counts saved-for-backward storages; `exclude` holds parameter/buffer tensors."""

    def __init__(self, exclude=(), trainable=()):
        self.skip = {_key(t) for t in exclude}
        self.trainable = {id(p) for p in trainable}
        self.copies: dict = {}
        self.outside: dict = {}
        self.kept: dict = {}
        self.blocks: list[dict] = []
        self.everything: dict = {}
        self._stack: list[dict] = []
        self._refs: list[torch.Tensor] = []   # keep storages alive so their keys stay unique

    def _record(self, t: torch.Tensor, into: dict) -> None:
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            return
        k = _key(t)
        if k in self.skip:
            return
        self._refs.append(t.detach())
        into.setdefault(k, k[2])
        self.everything.setdefault(k, k[2])

    def _is_weight_copy(self, t: torch.Tensor) -> bool:
        """A cast of a trainable leaf (autocast's fp16/bf16 copy of an fp32 weight): autocast
        caches these for the whole autocast region, checkpointed or not."""
        fn = t.grad_fn
        for _ in range(4):                         # through views such as linear's weight.t()
            if fn is None or not fn.next_functions:
                return False
            name = type(fn).__name__
            if name == "ToCopyBackward0":
                acc = fn.next_functions[0][0]
                return acc is not None and id(getattr(acc, "variable", None)) in self.trainable
            if name not in _VIEWS:
                return False
            fn = fn.next_functions[0][0]
        return False

    def _pack(self, t):
        if isinstance(t, torch.Tensor) and self.trainable and self._is_weight_copy(t):
            self._record(t, self.copies)
        else:
            self._record(t, self._stack[-1] if self._stack else self.outside)
        # a detached alias: packing the saved output of a node itself would tie that node to its
        # output through C++ (a cycle gc cannot see), leaking the graph and every weight it saved
        return t.detach() if isinstance(t, torch.Tensor) else t

    @contextmanager
    def counting(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            yield self

    def checkpoint(self, fn, *args, **kwargs):
        """Stands in for torch.utils.checkpoint.checkpoint(fn, *args): same result, accounted."""
        if self._stack:                                   # nested: part of the enclosing block
            return fn(*args, **kwargs)
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, torch.Tensor):
                self._record(a, self.kept)
        block: dict = {}
        self._stack.append(block)
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
                out = fn(*args, **kwargs)
        finally:
            self._stack.pop()
        self.blocks.append(block)
        return out

    def result(self) -> ActivationCount:
        outside = {k: v for k, v in self.outside.items() if k not in self.kept and k not in self.copies}
        sizes = [sum(v for k, v in b.items() if k not in self.kept and k not in outside) for b in self.blocks]
        return ActivationCount(outside=sum(outside.values()), kept_inputs=sum(self.kept.values()),
                               largest_block=max(sizes, default=0), blocks=len(sizes),
                               all_saved=sum(self.everything.values()), weight_copies=sum(self.copies.values()))


def checkpointed_modules(*models) -> list[torch.nn.Module]:
    """Modules (diffusers or transformers) that checkpoint their forward right now."""
    return [m for model in models for m in model.modules()
            if getattr(m, "gradient_checkpointing", False) is True and hasattr(m, "_gradient_checkpointing_func")]


@contextmanager
def accounted_checkpoints(counter: SavedTensorCounter, *models):
    """Swap the checkpoint function of every checkpointed block for `counter.checkpoint`."""
    mods = checkpointed_modules(*models)
    saved = [m._gradient_checkpointing_func for m in mods]
    for m in mods:
        m._gradient_checkpointing_func = counter.checkpoint
    try:
        yield mods
    finally:
        for m, f in zip(mods, saved):
            m._gradient_checkpointing_func = f


def count_activations(forward, models, exclude=(), trainable=()) -> tuple[ActivationCount, object]:
    """(ActivationCount, forward()'s result) for one call of `forward` under the counting hooks;
    `models` are searched for checkpointed blocks, `exclude` are parameters and buffers."""
    counter = SavedTensorCounter(exclude, trainable)
    with accounted_checkpoints(counter, *models), counter.counting():
        out = forward()
    return counter.result(), out
