"""``memory.budget_gb``: choose the cheapest memory settings whose estimated peak fits the budget.

Options are tried from cheapest to dearest, each adding to the one before: exact ones first (decoder sub-batches,
guidance halves one after the other, one waveform per UNet call, vocoder and attention chunks), then model offload,
then approximate VAE chunks, then sequential offload. Settings the user gave explicitly are never changed. The peak is
an estimate: the weights resident on the device plus the largest stage's activations, from the latent and mel shapes
and per-architecture activation factors (README: long audio). Without a budget nothing here runs.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, open_dict

from .errors import ConfigError

if TYPE_CHECKING:
    from .geometry import AudioGeometry
    from .stages.base import Stage

log = logging.getLogger(__name__)

GIB = 2**30
# Live activation bytes per element of the stage's widest feature map; conservative upper estimates.
UNET_FACTOR = 48  # resnet + transformer blocks keep skip connections of every level alive
VAE_FACTOR = 6  # up blocks at full mel resolution: input, norm, conv output and the skip
VOCODER_FACTOR = 8  # multi-receptive-field residual blocks at each up-sampling rate


@dataclass
class Workload:
    """What one call asks of the device, independent of memory settings."""

    unet_rows: int  # prompts x candidates x (2 with guidance)
    waveforms: int  # prompts x candidates
    latent_tokens: int  # latent height x width
    unet_channels: int  # the UNet's first block width
    attention_heads: int
    mel_frames: int
    mel_bins: int
    vae_channels: int  # the VAE decoder's block at full mel resolution (its narrowest)
    vae_factor: int  # latent frames -> mel frames
    hop: int  # mel frames -> samples
    vocoder_channels: int  # channels at the output rate; every up-sampling level holds hop x this per mel frame
    dtype_bytes: dict[str, int] = field(default_factory=dict)  # per stage
    weight_bytes: dict[str, int] = field(default_factory=dict)  # per stage (shared modules counted once)
    kernel_attention: bool = False  # CUDA SDPA kernels never hold the attention scores


def stage_weight_bytes(stages: list[Stage]) -> dict[str, int]:
    seen: set[int] = set()
    sizes: dict[str, int] = {}
    for stage in stages:
        total = 0
        for module in stage.modules.values():
            if isinstance(module, torch.nn.Module):
                for p in module.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        total += p.numel() * p.element_size()
        sizes[stage.name] = total
    return sizes


def estimate_peak_bytes(work: Workload, memory: dict[str, Any], offload: str) -> float:
    """Estimated peak device bytes of one call under ``memory`` settings and an offload mode."""
    b = work.dtype_bytes
    rows = min(memory.get("unet_batch_size") or work.unet_rows, work.unet_rows)
    unet = rows * work.latent_tokens * work.unet_channels * b.get("denoiser", 4) * UNET_FACTOR
    if not work.kernel_attention:
        queries = min(memory.get("attention_chunk_size") or work.latent_tokens, work.latent_tokens)
        unet += rows * work.attention_heads * queries * work.latent_tokens * b.get("denoiser", 4)
    decode_rows = min(memory.get("decode_batch_size") or work.waveforms, work.waveforms)
    vae_chunk = memory.get("vae_chunk_frames")
    frames = work.mel_frames
    if vae_chunk:
        frames = min(frames, (vae_chunk + 2 * int(memory.get("vae_overlap_frames") or 0)) * work.vae_factor)
    vae = decode_rows * frames * work.mel_bins * work.vae_channels * b.get("vae_decoder", 4) * VAE_FACTOR
    voc_chunk = memory.get("vocoder_chunk_frames")
    voc_frames = work.mel_frames
    if voc_chunk:
        voc_frames = min(voc_frames, voc_chunk + 2 * int(memory.get("vocoder_overlap_frames") or 0))
    vocoder = decode_rows * voc_frames * work.hop * work.vocoder_channels * b.get("vocoder", 4) * VOCODER_FACTOR
    activations = {"denoiser": unet, "vae_decoder": vae, "vocoder": vocoder}
    weights = work.weight_bytes
    if offload == "none":
        return sum(weights.values()) + max(activations.values())
    if offload == "model":  # one stage's weights at a time
        return max(weights.get(name, 0) + act for name, act in activations.items())
    # sequential/group: one submodule's weights at a time; count a tenth of the stage as a generous bound
    return max(weights.get(name, 0) / 10 + act for name, act in activations.items())


def _ladder(work: Workload, on_accelerator: bool) -> list[tuple[str, dict[str, Any], str | None]]:
    """(label, memory settings, offload mode or None) from cheapest to dearest; each includes the ones before."""
    ten_s_frames = 1000  # mel frames of 10 s at the published 10 ms hop
    steps: list[tuple[str, dict[str, Any], str | None]] = [("nothing", {}, None)]
    current: dict[str, Any] = {}

    def add(label: str, settings: dict[str, Any], offload: str | None = None) -> None:
        current.update(settings)
        steps.append((label, dict(current), offload or steps[-1][2]))

    add("decoder one waveform at a time", {"decode_batch_size": 1})
    if work.unet_rows > work.waveforms:
        add("guidance halves one after the other", {"unet_batch_size": max(1, work.unet_rows // 2)})
    if work.waveforms > 1:
        add("one waveform per UNet call", {"unet_batch_size": 1})
    add("vocoder and attention in chunks", {"vocoder_chunk_frames": ten_s_frames, "attention_chunk_size": 1024})
    if on_accelerator:
        add("model offload", {}, "model")
    add("VAE decoder in chunks (approximate)", {"vae_chunk_frames": 256})
    if on_accelerator:
        add("sequential offload", {}, "sequential")
    return steps


def plan_memory(
    cfg: DictConfig, work: Workload, on_accelerator: bool, allowed: Any = None
) -> tuple[str, dict[str, Any], str, float]:
    """The first ladder step whose estimate fits ``memory.budget_gb``: (label, settings, offload, estimate GiB).

    User-set memory keys and a user-set offload mode stay as given. ``allowed(offload)`` says whether an offload mode
    passes the combination rules with the rest of the config; refused modes are skipped.
    """
    budget = float(cfg.memory.budget_gb) * GIB
    user = {k: v for k, v in cfg.memory.items() if v is not None and k not in ("budget_gb",)}
    user_offload = cfg.offload.mode
    best = None
    for label, settings, offload in _ladder(work, on_accelerator):
        mode = user_offload if user_offload != "none" or offload is None else offload
        if allowed is not None and mode != user_offload and not allowed(mode):
            continue
        merged = {**settings, **user}
        estimate = estimate_peak_bytes(work, merged, mode)
        best = (label, {k: v for k, v in settings.items() if k not in user}, mode, estimate / GIB)
        if estimate <= budget:
            return best
    assert best is not None
    log.warning(
        "memory.budget_gb=%s: no setting fits (estimated %.2f GiB with everything on); running with all of it",
        cfg.memory.budget_gb,
        best[3],
    )
    return best


def apply_plan(cfg: DictConfig, settings: dict[str, Any], offload: str) -> None:
    with open_dict(cfg):
        for key, value in settings.items():
            cfg.memory[key] = value
        if offload != cfg.offload.mode:
            cfg.offload.mode = offload
            cfg.offload.setdefault("offload_device", "cpu")


def workload(cfg: DictConfig, stages: list[Stage], geometry: AudioGeometry, num_prompts: int) -> Workload:
    """The device work of one call with these stages and this audio geometry."""
    by_name = {s.name: s for s in stages}
    if "denoiser" not in by_name:
        raise ConfigError("memory.budget_gb", "needs a denoiser stage in the chain")
    unet = by_name["denoiser"].modules["unet"]
    store = by_name["denoiser"].store
    vae_cfg, voc_cfg = store.config("vae"), store.config("vocoder")
    waveforms = num_prompts * int(cfg.num_waveforms)
    guidance = float(cfg.guidance_scale) > 1.0
    heads = unet.config.attention_head_dim
    heads = max(heads) if isinstance(heads, list | tuple) else heads
    denoiser = by_name["denoiser"]
    return Workload(
        unet_rows=waveforms * (2 if guidance else 1),
        waveforms=waveforms,
        latent_tokens=math.prod(geometry.latent_hw),
        unet_channels=int(unet.config.block_out_channels[0]),
        attention_heads=int(heads),
        mel_frames=geometry.mel_frames,
        mel_bins=geometry.mel_bins,
        vae_channels=int(min(vae_cfg["block_out_channels"])),
        vae_factor=geometry.vae_scale_factor,
        hop=int(math.prod(voc_cfg["upsample_rates"])),
        vocoder_channels=int(voc_cfg["upsample_initial_channel"]) // 2 ** len(voc_cfg["upsample_rates"]),
        dtype_bytes={s.name: torch.empty((), dtype=s.dtype).element_size() for s in stages},
        weight_bytes=stage_weight_bytes([s for s in stages if s.device == denoiser.device]),
        kernel_attention=denoiser.device.type == "cuda"
        and cfg.attention.backend in ("sdpa", "flash", "efficient", "cudnn"),
    )


def plan_for_generator(cfg: DictConfig, stages: list[Stage]) -> None:
    """Plan ``memory.budget_gb`` for a Generator's loaded (not yet placed) stages, apply it to ``cfg`` and log it."""
    from .compat import check_combinations
    from .config import prompt_list
    from .devices import probe_device

    denoiser = next(s for s in stages if s.name == "denoiser")
    geometry = denoiser.geometry(cfg.audio_length_s)
    num_prompts = len(prompt_list(cfg.prompt)) if cfg.get("prompt") is not None else int(cfg.get("batch_size") or 1)
    work = workload(cfg, stages, geometry, num_prompts)

    def allowed(mode: str) -> bool:
        trial = copy.deepcopy(cfg)
        with open_dict(trial):
            trial.offload.mode = mode
            trial.offload.setdefault("offload_device", "cpu")
        try:
            check_combinations(trial, probe_device)
        except ConfigError:
            return False
        return True

    label, settings, offload, estimate = plan_memory(cfg, work, denoiser.device.type != "cpu", allowed)
    apply_plan(cfg, settings, offload)
    chosen = ", ".join(f"memory.{k}={v}" for k, v in settings.items()) or "no memory option"
    log.info(
        "memory.budget_gb=%s: %s (%s, offload=%s), estimated peak %.2f GiB",
        cfg.memory.budget_gb,
        label,
        chosen,
        offload,
        estimate,
    )
