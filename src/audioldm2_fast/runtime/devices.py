"""What a device can do, probed once. Validation asks this module, so tests can describe a GPU that is not there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch


@dataclass(frozen=True)
class DeviceInfo:
    type: str  # cpu | cuda | mps | meta
    name: str
    count: int = 1  # devices of this type (CUDA indices 0..count-1)
    capability: tuple[int, int] | None = None  # CUDA compute capability
    bf16: bool = True

    @property
    def is_accelerator(self) -> bool:
        return self.type in ("cuda", "mps")


Probe = Callable[[str], "DeviceInfo | None"]


@cache
def probe_device(device_type: str) -> DeviceInfo | None:
    """Describe the local devices of one type, or None when there are none."""
    if device_type in ("cpu", "meta"):
        return DeviceInfo(type=device_type, name=device_type)
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return None
        return DeviceInfo(
            type="cuda",
            name=torch.cuda.get_device_name(0),
            count=torch.cuda.device_count(),
            capability=torch.cuda.get_device_capability(0),
            bf16=torch.cuda.is_bf16_supported(),
        )
    if device_type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return None
        return DeviceInfo(type="mps", name="mps")
    return None


def resolve_device(name: str | None, probe: Probe = probe_device) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU."""
    if name in (None, "auto"):
        for candidate in ("cuda", "mps"):
            if probe(candidate) is not None:
                return torch.device(candidate)
        return torch.device("cpu")
    return torch.device(name)
