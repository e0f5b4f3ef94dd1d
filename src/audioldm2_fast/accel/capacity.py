"""Will one call fit in its device's memory at all? Checked before any weights load, so that an ``audio_length_s`` or
``num_waveforms`` far beyond the machine is refused in one line instead of failing in an allocation.

The estimate is the memory planner's (``memory_plan``) at its least: the weights on the denoiser's device plus the
largest stage's activations, traced on ``meta`` twins of the modules at the request's exact shapes, under the
configured memory settings and offload mode, with attention as a fused kernel and no margin. It is compared with
everything the device has (all of a GPU's memory; the machine's RAM and swap, or its cgroup limit, for the CPU), so
only a call that cannot run on it at all is refused; one that needs memory other processes hold still fails when it
runs, as an out-of-memory error (exit code 7).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..runtime.errors import ConfigError
from ..stages.geometry import AudioGeometry
from .memory_plan import GIB, estimate_peak_bytes, workload


def device_capacity_bytes(device: torch.device) -> int | None:
    """All the memory ``device`` has (None when unknown)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory())
    if device.type == "cpu":
        return _host_memory_bytes()
    return None


def _host_memory_bytes() -> int | None:
    """RAM and swap, or the cgroup's memory limit when that is lower."""
    total = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        fields = {}
        for line in meminfo.read_text().splitlines():
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                fields[name] = int(parts[0]) * 1024
        total = fields.get("MemTotal", 0) + fields.get("SwapTotal", 0) or None
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total


@dataclasses.dataclass(frozen=True)
class Blame:
    """Which setting a refusal names for each cause (``where`` starts the message: a prompts file's line)."""

    length_key: str = "audio_length_s"
    waveforms_key: str = "num_waveforms"
    count_key: str = "prompt"  # what sets the prompts of one call: ``prompt`` (a list) or ``batch_size``
    where: str = ""


def check_fits(
    cfg: DictConfig,
    chain: Any,
    geometry: Callable[[float | None], AudioGeometry],
    audio_length_s: float | None,
    num_prompts: int,
    num_waveforms: int,
    blame: Blame | None = None,
) -> None:
    """Refuse a call of ``num_prompts`` x ``num_waveforms`` at ``audio_length_s`` that its device cannot hold.

    ``chain`` is a ``generator.ChainPreview``; ``geometry(audio_length_s)`` gives the request's shapes.
    """
    blame = blame or Blame()
    if "denoiser" not in chain.placements:
        return
    device = chain.placements["denoiser"][0]
    capacity = device_capacity_bytes(device)
    if capacity is None:
        return
    shape = geometry(audio_length_s)

    def estimate(prompts: int, waveforms: int) -> float:
        # The vocoder's output and its pieces alone, before tracing anything: a bound that needs no trace.
        samples = prompts * waveforms * shape.waveform_length
        if 2 * 4 * samples > capacity:
            return float(2 * 4 * samples)
        request = OmegaConf.merge(cfg, {"num_waveforms": waveforms})
        work = workload(request, dataclasses.replace(chain, num_prompts=prompts), shape, least=True)
        memory = {k: v for k, v in (cfg.get("memory") or {}).items() if k != "budget_gb"}
        try:
            return estimate_peak_bytes(work, memory, str(cfg.offload.mode))
        except (RuntimeError, OverflowError):  # shapes past what a tensor can describe
            return float("inf")

    needed = estimate(num_prompts, num_waveforms)
    if needed <= capacity:
        return
    if estimate(1, 1) > capacity:
        key, value = blame.length_key, f"{shape.audio_length_s:g} s of audio"
    elif num_waveforms > 1 and estimate(num_prompts, 1) <= capacity:
        key, value = blame.waveforms_key, f"{num_waveforms} waveforms of {shape.audio_length_s:g} s"
    else:
        key, value = blame.count_key, f"{num_prompts} prompts of {shape.audio_length_s:g} s in one call"
    amount = f"{needed / GIB:,.1f} GiB" if needed != float("inf") else "more memory than any machine has"
    raise ConfigError(
        key,
        f"{blame.where}{value} needs an estimated {amount} on {device}, which has {capacity / GIB:,.1f} GiB; "
        "try a shorter audio_length_s, fewer num_waveforms, or memory.budget_gb=<GiB to use>",
    )
