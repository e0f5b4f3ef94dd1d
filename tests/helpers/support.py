"""What several test files share: the repository's paths, short-run overrides, described GPUs, a CLI runner, and the
bad-input tables' output dir, snapshots and placeholders."""

from __future__ import annotations

import json
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


def dir_with_a_run(path: Path) -> Path:
    """An output dir that already holds a run's files (what a refused invocation must leave as it is)."""
    path.mkdir()
    (path / "rain-00000000_s0_c0.wav").write_bytes(b"RIFF earlier audio")
    (path / "manifest.jsonl").write_text(json.dumps({"path": "rain-00000000_s0_c0.wav"}) + "\n")
    return path


def snapshot(directory: Path, contents: bool = True) -> dict[str, tuple[object, int]]:
    """Every file and link under ``directory`` (links not followed) with its modification time, and its bytes (or,
    with ``contents`` off, its size)."""
    seen: dict[str, tuple[object, int]] = {}
    for top, dirs, files in os.walk(directory):
        for name in files + [d for d in dirs if (Path(top) / d).is_symlink()]:
            path = Path(top) / name
            stat = path.lstat()
            data = path.read_bytes() if contents and not path.is_symlink() else stat.st_size
            seen[str(path.relative_to(directory))] = (data, stat.st_mtime_ns)
    return seen


def fill_placeholders(args: list[str], values: dict[str, str]) -> list[str]:
    """Fill the {name} placeholders of a table's arguments (other braces, as in ``prompt={a:1}``, stay as they are)."""
    filled = []
    for arg in args:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        filled.append(arg)
    return filled
