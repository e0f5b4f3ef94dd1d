"""What a device can do, probed once, without importing torch.

Validation asks this module, so that a refused setting costs no torch import and tests can describe a GPU that is
not there (any callable ``Probe`` will do). CUDA is probed through the driver library (``libcuda``), which honours
``CUDA_VISIBLE_DEVICES`` as torch does, and only when the installed torch is a CUDA build (read from its
``version.py`` without importing it). When torch is already imported, torch itself answers, so that the two always
agree inside one process that runs models.
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any


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

#: Set on a module whose placement offload hooks manage; stages leave such modules where the hooks put them.
OFFLOAD_HOOKED = "_audioldm2_fast_offload_hooked"


@cache
def probe_device(device_type: str) -> DeviceInfo | None:
    """Describe the local devices of one type, or None when there are none."""
    if device_type in ("cpu", "meta"):
        return DeviceInfo(type=device_type, name=device_type)
    if device_type == "cuda":
        return _probe_cuda_with_torch() if "torch" in sys.modules else _probe_cuda_with_driver()
    if device_type == "mps":
        return _probe_mps()
    return None


def _cuda_info(count: int, name: str, capability: tuple[int, int]) -> DeviceInfo:
    # Native bf16 arithmetic starts with sm80 (Ampere); older GPUs only emulate it, slowly.
    return DeviceInfo(type="cuda", name=name, count=count, capability=capability, bf16=capability >= (8, 0))


def _probe_cuda_with_torch() -> DeviceInfo | None:
    torch = sys.modules["torch"]
    if not torch.cuda.is_available():
        return None
    return _cuda_info(torch.cuda.device_count(), torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))


def _torch_version_field(name: str) -> str | None:
    """A field of the installed torch's ``version.py`` (``__version__``, ``cuda``, ``hip``), read without importing
    torch; None when torch or the field is missing."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return None
    match = re.search(rf"^{re.escape(name)}\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, flags=re.M)
    return match.group(1) if match else None


def torch_version() -> str | None:
    """The installed torch's version with its build tag (``2.11.0+cu130``), which PyPI metadata drops."""
    return _torch_version_field("__version__")


def torch_cuda_build() -> str | None:
    """The CUDA version the installed torch was built for (None for CPU builds; ``"hip"`` for ROCm builds)."""
    return _torch_version_field("cuda") or ("hip" if _torch_version_field("hip") else None)


def _probe_cuda_with_driver() -> DeviceInfo | None:
    build = torch_cuda_build()
    if build is None:
        return None
    if build == "hip":  # ROCm builds speak CUDA through HIP: only torch itself can tell
        importlib.import_module("torch")
        return _probe_cuda_with_torch()
    try:
        lib: Any = ctypes.CDLL("libcuda.so.1" if platform.system() != "Windows" else "nvcuda.dll")
    except OSError:
        return None
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return None
    device = ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    if lib.cuDeviceGet(ctypes.byref(device), 0) != 0 or lib.cuDeviceGetName(name, 256, device) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    lib.cuDeviceGetAttribute(ctypes.byref(major), 75, device)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)
    return _cuda_info(count.value, name.value.decode(errors="replace"), (major.value, minor.value))


def _probe_mps() -> DeviceInfo | None:
    if "torch" in sys.modules:
        mps = getattr(sys.modules["torch"].backends, "mps", None)
        return DeviceInfo(type="mps", name="mps") if mps is not None and mps.is_available() else None
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return None
    release = tuple(int(p) for p in (platform.mac_ver()[0] or "0").split(".")[:2] if p.isdigit())
    return DeviceInfo(type="mps", name="mps") if release >= (12, 3) else None


def resolve_device_name(name: str | None, probe: Probe = probe_device) -> str:
    """``auto`` picks CUDA, then MPS, then the CPU; other names are returned as given."""
    if name in (None, "auto"):
        for candidate in ("cuda", "mps"):
            if probe(candidate) is not None:
                return candidate
        return "cpu"
    return str(name)


def synchronize(device: Any) -> None:
    """Wait for the work queued on a CUDA ``torch.device`` (a no-op elsewhere), so host clocks time device work."""
    if getattr(device, "type", None) == "cuda":
        sys.modules["torch"].cuda.synchronize(device)
