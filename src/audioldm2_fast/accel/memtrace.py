"""Peak activation memory of a module call, measured without running it: the call runs on ``meta`` tensors, which
have shapes and dtypes but no data, under a dispatch mode that counts the bytes of every tensor storage created
inside the call while it is alive. That is what the CUDA caching allocator reports as allocated memory, less its
kernels' own workspaces (cuDNN, cuBLAS) and its 512-byte rounding, which ``budget.ACCELERATOR_MARGIN`` covers.

A full-size UNet step over 150 s of audio traces in well under a second on any machine, so ``memory.budget_gb`` plans
from the real code path (sub-batches, time chunks, attention chunks) instead of from per-architecture constants.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Counts bytes of tensor storages created under the mode: ``live`` now, ``peak`` the most at once.

    Storages of ``ignore`` (a module's weights, say, or the call's inputs) are not counted, nor are views of them.
    """

    def __init__(self, ignore: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._ignored = [t.untyped_storage() for t in ignore]  # held, so their ids stay theirs
        self._ids = {id(s) for s in self._ignored}

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._ids:
            return
        size = storage.nbytes()
        self._ids.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        # Storages keep their Python object for as long as they live, so this runs when the memory would be freed.
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._ids.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self._count(leaf)
        return out


def _kernel_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """Stands in for a fused attention kernel (flash, memory-efficient, cuDNN): it allocates the output only."""
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Trace attention as a fused CUDA kernel does it, never holding the queries x keys scores."""
    real = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _kernel_sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


def meta_twin(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A module of the same class and config on the ``meta`` device (no weights are copied or allocated)."""
    config = getattr(module, "config", None)
    if config is None:
        raise TypeError(f"{type(module).__name__} has no config to rebuild it from")
    with torch.device("meta"):
        if hasattr(type(module), "from_config") and not hasattr(config, "to_dict"):  # diffusers
            twin = type(module).from_config(config)
        else:  # transformers: PreTrainedModel(config)
            twin = type(module)(config)
    torch.nn.Module.to(twin, dtype=dtype)  # diffusers' ModelMixin.to warns on every dtype cast
    return twin.eval()


@torch.no_grad()
def peak_activation_bytes(
    fn: Callable[..., Any], *inputs: torch.Tensor, module: torch.nn.Module | None = None, fused: bool = False
) -> int:
    """Peak bytes held by tensors that ``fn(*inputs)`` creates (weights and inputs excluded).

    ``inputs`` and ``module`` should be on ``meta`` so nothing is computed; ``fused=True`` traces attention as a fused
    kernel (CUDA SDPA) rather than the math path that materialises the scores.
    """
    ignore = [*inputs, *(module.parameters() if module is not None else ()), *(module.buffers() if module else ())]
    mode = LiveTensorBytes(ignore)
    with fused_attention() if fused else contextlib.nullcontext(), mode:
        out = fn(*inputs)
    del out
    return mode.peak
