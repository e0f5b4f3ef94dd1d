"""Will one call fit in its device's memory at all? Checked before any weights load, so that an ``audio_length_s`` or
``num_waveforms`` far beyond the machine is refused in one line instead of failing in an allocation.

What a call needs is compared with everything the device has (all of a GPU's memory; the machine's RAM and swap, or
its cgroup limit, for the CPU), so only a call that cannot run on it at all is refused; one that needs memory other
processes hold still fails when it runs, as an out-of-memory error (exit code 7). What it needs is bounded in two
steps. First, from the component configs alone: the weights on the denoiser's device (from the safetensors headers)
plus the largest single tensor the call must hold (:func:`least_bytes`, a few microseconds). When even that does not
fit, the call is refused; when many times that tensor would still fit, it is let through. Only in between is the
memory planner's estimate (``memory_plan``) made, at its least: activations traced on ``meta`` twins of the modules
at the request's exact shapes and memory settings, attention as a fused kernel, no margin (about a second for the
full-size model).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..checkpoints.safety import safetensors_header, weight_files
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


#: A traced peak's activations are at most this many times :func:`least_bytes` (measured: 6.0 to 6.2 on the tiny and
#: the full-size model, 1 to 600 s, 1 and 4 waveforms); a call that fits even then is not traced at all.
ACTIVATIONS_PER_LEAST = 32


def weight_bytes(store: Any, chain: Any, device: torch.device) -> int:
    """Bytes of the weights that stages on ``device`` load, from the safetensors headers (0 for a store with no
    files, such as a synthetic checkpoint's: still a lower bound)."""
    total, seen = 0, set()
    for entry in chain.entries:
        stage_device, dtype = chain.placements[entry.name]
        if stage_device != device:
            continue
        size = torch.empty((), dtype=dtype).element_size()
        for component in entry.cls.components:
            if component in seen:
                continue
            seen.add(component)
            for path in weight_files(Path(store.path) / component)[0]:
                for tensor in safetensors_header(path).values():
                    total += math.prod(tensor["shape"]) * size  # loaded in the stage's dtype
    return total


def least_bytes(store: Any, shape: AudioGeometry, rows: int, waveforms: int, memory: dict, dtypes: dict) -> int:
    """The largest single tensor one call must hold at once, from the component configs alone: no trace, and never
    more than the call really needs (sub-batches and chunks in ``memory`` taken into account)."""
    unet, vae, vocoder = (store.config(name) for name in ("unet", "vae", "vocoder"))
    size = {stage: torch.empty((), dtype=dtypes.get(stage, torch.float32)).element_size() for stage in dtypes}
    frames, bins = shape.mel_frames, shape.mel_bins
    latent_h, latent_w = shape.latent_hw
    decode_rows = min(waveforms, memory.get("decode_batch_size") or waveforms)
    unet_rows = min(rows, memory.get("unet_batch_size") or rows)
    vae_frames = frames
    if memory.get("vae_chunk_frames"):
        context = memory["vae_chunk_frames"] + 2 * int(memory.get("vae_overlap_frames") or 0)
        vae_frames = min(frames, context * shape.vae_scale_factor)
    voc_frames = frames
    if memory.get("vocoder_chunk_frames"):
        voc_frames = min(frames, memory["vocoder_chunk_frames"] + 2 * int(memory.get("vocoder_overlap_frames") or 0))
    rates = [int(r) for r in vocoder["upsample_rates"]]
    channels = int(vocoder["upsample_initial_channel"])
    vocoder_levels = [channels // 2 ** (k + 1) * voc_frames * math.prod(rates[: k + 1]) for k in range(len(rates))] + [
        channels * voc_frames
    ]
    tensors = {
        "denoiser": [
            rows * int(unet["in_channels"]) * latent_h * latent_w,
            unet_rows * int(unet["block_out_channels"][0]) * latent_h * latent_w,
        ],
        "vae_decoder": [waveforms * frames * bins, decode_rows * int(vae["block_out_channels"][0]) * vae_frames * bins],
        "vocoder": [waveforms * frames * math.prod(rates), decode_rows * max(vocoder_levels)],
    }
    return max(n * size.get(stage, 4) for stage, counts in tensors.items() for n in counts)


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

    ``chain`` is a ``generator.ChainPreview``; ``geometry(audio_length_s)`` gives the request's shapes. A call whose
    weights and largest single tensor (:func:`least_bytes`) do not fit is refused at once; one that would fit with
    many times that tensor is let through without a trace; the rest are traced.
    """
    blame = blame or Blame()
    if "denoiser" not in chain.placements:
        return
    device = chain.placements["denoiser"][0]
    capacity = device_capacity_bytes(device)
    if capacity is None:
        return
    shape = geometry(audio_length_s)
    memory = {k: v for k, v in (cfg.get("memory") or {}).items() if k != "budget_gb"}
    dtypes = {name: dtype for name, (_, dtype) in chain.placements.items()}
    guidance = 2 if float(cfg.guidance_scale) > 1.0 else 1

    weights = weight_bytes(chain.store, chain, device)

    def estimate(prompts: int, waveforms: int) -> tuple[float, bool]:
        """(bytes, whether traced): the least bytes when even those do not fit, or when even many times them do."""
        total = prompts * waveforms
        least = weights + least_bytes(chain.store, shape, total * guidance, total, memory, dtypes)
        if least > capacity or weights + (least - weights) * ACTIVATIONS_PER_LEAST <= capacity:
            return float(least), False
        request = OmegaConf.merge(cfg, {"num_waveforms": waveforms})
        work = workload(request, dataclasses.replace(chain, num_prompts=prompts), shape, least=True)
        try:
            return estimate_peak_bytes(work, memory, str(cfg.offload.mode)), True
        except (RuntimeError, OverflowError):  # shapes past what a tensor can describe
            return float("inf"), True

    needed, traced = estimate(num_prompts, num_waveforms)
    if needed <= capacity:
        return
    if estimate(1, 1)[0] > capacity:
        key, value = blame.length_key, f"{shape.audio_length_s:g} s of audio"
    elif num_waveforms > 1 and estimate(num_prompts, 1)[0] <= capacity:
        key, value = blame.waveforms_key, f"{num_waveforms} waveforms of {shape.audio_length_s:g} s"
    else:
        key, value = blame.count_key, f"{num_prompts} prompts of {shape.audio_length_s:g} s in one call"
    amount = _size(needed) if needed != float("inf") else "more memory than any machine has"
    raise ConfigError(
        key,
        f"{blame.where}{value} needs {'an estimated' if traced else 'at least'} {amount} on {device}, which has "
        f"{_size(capacity)}; try a shorter audio_length_s, fewer num_waveforms, or memory.budget_gb=<GiB>",
    )


def _size(n: float) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB else f"{n / 2**20:,.0f} MiB"
