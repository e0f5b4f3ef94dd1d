"""What several test files share: the repository's paths, short-run overrides, described GPUs and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from audioldm2_fast.runtime.devices import DeviceInfo

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent  # on PYTHONPATH: custom_stages, batch_stages, browser, support

# Short audio and few steps keep the CPU suite fast; parity does not depend on either.
FAST = ["checkpoint=tiny", "audio_length_s=1.0", "steps=4"]

H100 = DeviceInfo(type="cuda", name="NVIDIA H100", count=1, capability=(9, 0), bf16=True)
V100 = DeviceInfo(type="cuda", name="Tesla V100", count=1, capability=(7, 0), bf16=False)


def probe_with(gpu: DeviceInfo | None):
    """A device probe that describes this GPU (or none) instead of the machine's."""

    def probe(kind: str):
        if kind in ("cpu", "meta"):
            return DeviceInfo(type=kind, name=kind)
        return gpu if kind == "cuda" else None

    return probe


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: offline, and importing this checkout and the test helpers."""
    path = os.pathsep.join([str(HELPERS), *(p for p in sys.path if p)])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path, **extra}


def run_cli(
    args: list[str], cwd: Path, module: bool = False, env: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``audioldm2-fast ARGS`` (or ``python -m audioldm2_fast``) in a child process."""
    cmd = (
        [sys.executable, "-m", "audioldm2_fast", *args]
        if module
        else [str(Path(sys.executable).with_name("audioldm2-fast")), *args]
    )
    return subprocess.run(cmd, cwd=cwd, env=child_env(**(env or {})), capture_output=True, text=True, timeout=timeout)
