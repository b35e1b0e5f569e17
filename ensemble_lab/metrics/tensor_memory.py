"""Peak memory of live tensors, counted the same way on every device.

CUDA's allocator reports its peak (``torch.cuda.max_memory_allocated``); a CPU reports nothing
comparable. :class:`TensorMemory` counts instead: while it is active, every tensor storage that an
aten op returns is added to the live bytes, and subtracted again when that storage is freed (a
``weakref.finalize`` on the storage, whose Python object torch keeps for as long as it lives).
Storages that exist before (parameters, buffers, the input batch) are counted when handed to it.
Views and in-place results share a storage and add nothing.

What it sees is what a program holds: the peak of parameters + buffers + inputs + activations that
are alive at once. It does not see memory a kernel allocates for itself and never returns as a tensor
(cuDNN / oneDNN workspaces), nor the allocator's rounding and caching, so on CUDA it reads a little
below ``max_memory_allocated``.
"""

import weakref
from typing import Any

import torch
from torch import Tensor, nn

from ensemble_lab.compat import TorchDispatchMode, tree_leaves


class TensorMemory(TorchDispatchMode):
    """``with TensorMemory(model, batch) as memory: model(batch)``, then ``memory.peak_bytes``."""

    def __init__(self, *held: nn.Module | Tensor) -> None:
        """
        Args:
            held: modules (their parameters and buffers) and tensors that are alive before the block and count
                towards its peak.
        """
        super().__init__()
        self._live: dict[int, int] = {}  # id of a live storage -> its bytes
        self._finalizers: list[weakref.finalize] = []
        self.live_bytes = 0
        self.peak_bytes = 0
        # parameters outlive the counter: their finalizers go with it, or every measurement would leave some behind
        weakref.finalize(self, _detach_all, self._finalizers)
        for item in held:
            tensors = [*item.parameters(), *item.buffers()] if isinstance(item, nn.Module) else [item]
            for tensor in tensors:
                self._track(tensor)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self._track(leaf)
        return out

    def _track(self, tensor: Tensor) -> None:
        if tensor.layout != torch.strided:  # sparse / nested tensors have no single storage to follow
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # a wrapper subclass without storage of its own
            return
        key = id(storage)
        if key in self._live or storage.nbytes() == 0:
            return
        self._live[key] = storage.nbytes()
        self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        # the finalizer holds the counter weakly: parameters outlive it, and must not keep it alive
        finalizer = weakref.finalize(storage, _release, weakref.ref(self), key)
        finalizer.atexit = False
        self._finalizers.append(finalizer)


def _release(counter: "weakref.ref[TensorMemory]", key: int) -> None:
    """A counted storage was freed: it no longer counts towards the live bytes."""
    memory = counter()
    if memory is not None:
        memory.live_bytes -= memory._live.pop(key, 0)


def _detach_all(finalizers: list[weakref.finalize]) -> None:
    """A counter was collected: the storages it followed no longer report to it."""
    for finalizer in finalizers:
        finalizer.detach()
