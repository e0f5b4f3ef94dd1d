"""Turn an accelerator out-of-memory error into one message: which stage, on which device, and what to try."""

from __future__ import annotations

import re

import torch
from omegaconf import DictConfig

from ..runtime.errors import OutOfMemory

#: How allocators other than CUDA's say they are out of memory (the CPU's, MPS's), in a plain RuntimeError.
_OUT_OF_MEMORY = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure on any device: CUDA's own error, Python's MemoryError, or the CPU or MPS allocator's."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OUT_OF_MEMORY)


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def describe_oom(exc: BaseException, stage: str, device: torch.device, cfg: DictConfig) -> OutOfMemory:
    """The one-line error for ``exc`` raised by ``stage``; frees the allocator's cached blocks on the way."""
    text = str(exc)
    parts = []
    match = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", text)
    if match:
        parts.append(f"it asked for {match.group(1)} more")
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        parts.append(f"{_gib(torch.cuda.max_memory_allocated(device))} peak allocated of {_gib(total)}")
    first_line = text.splitlines()[0][:120] if text else "no details"
    detail = "; ".join(parts) or first_line
    hints = []
    budget = (cfg.get("memory") or {}).get("budget_gb")
    if budget is None:
        hints.append("memory.budget_gb=<GiB you can spare>")
    else:
        hints.append(f"a smaller memory.budget_gb than {budget}")
    if cfg.offload.mode == "none":
        hints.append("offload=model")
    elif cfg.offload.mode == "model":
        hints.append("offload=sequential")
    hints.append(f"a shorter audio_length_s (now {cfg.get('audio_length_s') or 'the default'})")
    if int(cfg.get("num_waveforms") or 1) > 1:
        hints.append("fewer num_waveforms")
    return OutOfMemory(stage, str(device), detail, ", ".join(hints))
