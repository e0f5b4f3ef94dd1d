"""The planner behind ``memory.budget_gb``: choose the cheapest memory settings whose estimated peak fits the budget.

Options are tried from cheapest to dearest, each kept only if it lowers the estimate: exact ones first (decoder
sub-batches, guidance halves one after the other, one waveform per UNet call, vocoder chunks, attention chunks), then
model offload, then approximate VAE chunks, then sequential offload; once the plan fits, any step that a later one
made unnecessary is dropped again. Settings the user gave explicitly are never changed. The peak is an estimate: the
weights resident on the device plus the largest stage's activations, traced on ``meta`` twins of the modules at the
request's exact shapes (``memtrace``), times a margin for kernel workspaces on an accelerator (README: long audio).
Without a budget nothing here runs. It plans before any weights load, from ``meta`` twins built from the components'
configs, so that the plan is a new config value the chain is then built from."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from omegaconf import DictConfig, OmegaConf

from ..config.validate import check_plan
from ..runtime.errors import ConfigError
from ..stages.denoiser import predict_noise, store_geometry
from ..stages.vae_decoder import decode_latents
from ..stages.vocoder import vocode
from .chunked_attention import ChunkedAttnProcessor
from .memtrace import meta_twin, peak_activation_bytes

if TYPE_CHECKING:
    from ..stages.geometry import AudioGeometry

log = logging.getLogger(__name__)

GIB = 2**30
# Traced activation bytes x this on an accelerator: kernel workspaces (cuDNN convolutions above all) and allocator
# rounding, which a trace of tensor storages does not see. Calibrated on the stock pipeline's measured peaks for
# 4 x 150 s on the base model (11.7 GB without offload, 9.5 GB with model offload; README: long audio).
ACCELERATOR_MARGIN = 1.75
T5_TOKENS = 128  # the T5 tokenizer's limit: the longest prompt the UNet's second cross-attention sees


@dataclass
class Workload:
    """What one call asks of the device: its batch and the weights and activation peaks of its stages."""

    unet_rows: int  # prompts x candidates x (2 with guidance)
    waveforms: int  # prompts x candidates
    weight_bytes: dict[str, int]  # per stage on the planned device (shared modules counted once)
    activations: Callable[[str, Mapping[str, Any]], float]  # (stage, memory settings) -> peak bytes, margin included


def stage_weight_bytes(modules: Mapping[str, Mapping[str, torch.nn.Module]]) -> dict[str, int]:
    """Bytes of weights per stage (``{stage: {component: module}}``); a module shared by stages counts once."""
    seen: set[int] = set()
    sizes: dict[str, int] = {}
    for stage, components in modules.items():
        total = 0
        for module in components.values():
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
        sizes[stage] = total
    return sizes


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


class ActivationTracer:
    """Activation peaks of the denoiser, VAE decoder and vocoder for one request, traced on ``meta`` twins of their
    modules (``memtrace``) and memoised per setting.

    Sub-batches and time chunks run one after another, so one call on the largest sub-batch and window is traced,
    plus the outputs that pile up before they are concatenated (twice the full output: the pieces and the result).
    ``test_memory`` checks this against a trace of the stages' own chunked code.
    """

    def __init__(
        self,
        geometry: AudioGeometry,
        unet_rows: int,
        waveforms: int,
        unet: torch.nn.Module | None = None,
        vae: torch.nn.Module | None = None,
        vocoder: torch.nn.Module | None = None,
        dtypes: Mapping[str, torch.dtype] | None = None,
        fused: Mapping[str, bool] | None = None,
        margin: Mapping[str, float] | None = None,
    ):
        dtypes = dtypes or {}
        self.geometry, self.unet_rows, self.waveforms = geometry, unet_rows, waveforms
        self.dtypes = {name: dtypes.get(name, torch.float32) for name in ("denoiser", "vae_decoder", "vocoder")}
        self.modules = {
            name: meta_twin(module, self.dtypes[name])
            for name, module in (("denoiser", unet), ("vae_decoder", vae), ("vocoder", vocoder))
            if module is not None
        }
        self.fused = dict(fused or {})
        self.margin = dict(margin or {})
        self._cache: dict[tuple, int] = {}

    def __call__(self, stage: str, memory: Mapping[str, Any]) -> float:
        if stage not in self.modules:
            return 0.0
        trace = {"denoiser": self._denoiser, "vae_decoder": self._vae, "vocoder": self._vocoder}[stage]
        return trace(memory) * self.margin.get(stage, 1.0)

    def _memo(self, key: tuple, fn: Callable[[], int]) -> int:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def _trace(self, stage: str, call: Callable[..., Any], *inputs: torch.Tensor) -> int:
        return peak_activation_bytes(call, *inputs, module=self.modules[stage], fused=self.fused.get(stage, False))

    def _denoiser(self, memory: Mapping[str, Any]) -> int:

        rows = min(memory.get("unet_batch_size") or self.unet_rows, self.unet_rows)
        chunk = memory.get("attention_chunk_size")
        unet, dtype = self.modules["denoiser"], self.dtypes["denoiser"]

        def trace() -> int:
            unet.set_attn_processor(ChunkedAttnProcessor(chunk) if chunk else AttnProcessor2_0())
            dims = [d for level in unet.config.cross_attention_dim for d in _flat(level) if d]
            gpt2_dim, t5_dim = dims[0], dims[-1]
            shape = (rows, unet.config.in_channels, *self.geometry.latent_hw)
            inputs = (
                torch.empty(shape, dtype=dtype, device="meta"),
                torch.empty((rows, 8, gpt2_dim), dtype=dtype, device="meta"),
                torch.empty((rows, T5_TOKENS, t5_dim), dtype=dtype, device="meta"),
                torch.empty((rows, T5_TOKENS), dtype=torch.long, device="meta"),
            )
            t = torch.tensor(1, device="meta")
            full = (self.unet_rows, *shape[1:])
            call = lambda x, c1, c2, m: predict_noise(unet, x, t, c1, c2, m, None)  # noqa: E731
            return self._trace("denoiser", call, *inputs) + 2 * _nbytes(full, dtype)

        return self._memo(("denoiser", rows, chunk), trace)

    def _window(self, frames: int, chunk: int | None, overlap: int) -> int:
        return frames if not chunk or chunk >= frames else min(frames, chunk + 2 * overlap)

    def _vae(self, memory: Mapping[str, Any]) -> int:
        rows = min(memory.get("decode_batch_size") or self.waveforms, self.waveforms)
        vae, dtype = self.modules["vae_decoder"], self.dtypes["vae_decoder"]
        latent_frames, latent_bins = self.geometry.latent_hw
        frames = self._window(latent_frames, memory.get("vae_chunk_frames"), int(memory.get("vae_overlap_frames") or 0))

        def trace() -> int:
            latents = torch.empty((rows, vae.config.latent_channels, frames, latent_bins), dtype=dtype, device="meta")
            mel = (self.waveforms, 1, self.geometry.mel_frames, self.geometry.mel_bins)
            call = lambda x: decode_latents(vae, x, {})  # noqa: E731
            return self._trace("vae_decoder", call, latents) + 2 * _nbytes(mel, dtype)

        return self._memo(("vae_decoder", rows, frames), trace)

    def _vocoder(self, memory: Mapping[str, Any]) -> int:
        rows = min(memory.get("decode_batch_size") or self.waveforms, self.waveforms)
        vocoder, dtype = self.modules["vocoder"], self.dtypes["vocoder"]
        mel_frames = self.geometry.mel_frames
        frames = self._window(
            mel_frames, memory.get("vocoder_chunk_frames"), int(memory.get("vocoder_overlap_frames") or 0)
        )

        def trace() -> int:
            mel = torch.empty((rows, frames, self.geometry.mel_bins), dtype=dtype, device="meta")
            samples = (self.waveforms, mel_frames * int(math.prod(vocoder.config.upsample_rates)))
            return self._trace("vocoder", lambda x: vocode(vocoder, x, {}), mel) + 2 * _nbytes(samples, dtype)

        return self._memo(("vocoder", rows, frames), trace)


def _flat(value: Any) -> list[Any]:
    return [x for v in value for x in _flat(v)] if isinstance(value, list | tuple) else [value]


def estimate_peak_bytes(work: Workload, memory: Mapping[str, Any], offload: str) -> float:
    """Estimated peak device bytes of one call under ``memory`` settings and an offload mode."""
    activations = {name: work.activations(name, memory) for name in ("denoiser", "vae_decoder", "vocoder")}
    weights = work.weight_bytes
    names = set(weights) | set(activations)
    if offload == "none":
        return sum(weights.values()) + max(activations.values())
    if offload == "model":  # one stage's weights at a time
        return max(weights.get(name, 0) + activations.get(name, 0.0) for name in names)
    # sequential/group: one submodule's weights at a time; count a tenth of the stage as a generous bound
    return max(weights.get(name, 0) / 10 + activations.get(name, 0.0) for name in names)


def _ladder(work: Workload, on_accelerator: bool) -> list[tuple[str, dict[str, Any], str | None]]:
    """(label, memory settings it adds, offload mode or None) from cheapest to dearest."""
    ten_s_frames = 1000  # mel frames of 10 s at the published 10 ms hop
    steps: list[tuple[str, dict[str, Any], str | None]] = [
        ("decoder one waveform at a time", {"decode_batch_size": 1}, None)
    ]
    if work.unet_rows > work.waveforms:
        steps.append(("guidance halves one after the other", {"unet_batch_size": max(1, work.unet_rows // 2)}, None))
    if work.waveforms > 1:
        steps.append(("one waveform per UNet call", {"unet_batch_size": 1}, None))
    steps.append(("vocoder in chunks", {"vocoder_chunk_frames": ten_s_frames}, None))
    steps.append(("attention in query chunks", {"attention_chunk_size": 1024}, None))
    if on_accelerator:
        steps.append(("model offload", {}, "model"))
    steps.append(("VAE decoder in chunks (approximate)", {"vae_chunk_frames": 256}, None))
    if on_accelerator:
        steps.append(("sequential offload", {}, "sequential"))
    return steps


def plan_memory(
    cfg: DictConfig, work: Workload, on_accelerator: bool, allowed: Any = None
) -> tuple[str, dict[str, Any], str, float]:
    """The cheapest settings whose estimate fits ``memory.budget_gb``: (label, settings, offload, estimate GiB).

    Forward, ladder steps are taken in order, each kept only if it lowers the estimated peak or some stage's own
    peak (attention chunks do nothing for a fused CUDA kernel, say), until the estimate fits. Backward, each kept step
    from the dearest down is dropped again if the rest still fits (an offload that the VAE chunks made unnecessary,
    say). User-set memory keys and a user-set offload mode stay as given; ``allowed(offload)`` says whether an offload
    mode passes the combination rules with the rest of the config.
    """
    budget = float(cfg.memory.budget_gb) * GIB
    user = {k: v for k, v in cfg.memory.items() if v is not None and k != "budget_gb"}
    user_offload = str(cfg.offload.mode)
    Step = tuple[str, dict[str, Any], str | None]

    def fold(steps: list[Step]) -> tuple[dict[str, Any], str]:
        settings: dict[str, Any] = {}
        offload = user_offload
        for _, adds, mode in steps:
            settings.update({k: v for k, v in adds.items() if k not in user})
            if mode is not None and user_offload == "none":
                offload = mode
        return settings, offload

    def score(steps: list[Step]) -> tuple[float, float]:
        settings, offload = fold(steps)
        memory = {**settings, **user}
        stages = sum(work.activations(name, memory) for name in ("denoiser", "vae_decoder", "vocoder"))
        return estimate_peak_bytes(work, memory, offload), stages

    ladder = [
        step
        for step in _ladder(work, on_accelerator)
        if step[2] is None or (user_offload == "none" and (allowed is None or allowed(step[2])))
    ]
    taken: list[Step] = []
    best = score(taken)
    for step in ladder:
        if best[0] <= budget:
            break
        trial = score([*taken, step])
        if trial[0] < best[0] or (trial[0] <= best[0] and trial[1] < best[1]):
            taken, best = [*taken, step], trial
    if best[0] <= budget:
        for step in reversed(list(taken)):
            rest = [s for s in taken if s is not step]
            trial = score(rest)
            if trial[0] <= budget:
                taken, best = rest, trial
    else:
        log.warning(
            "memory.budget_gb=%s: no setting fits (estimated %.2f GiB with everything on); running with all of it",
            cfg.memory.budget_gb,
            best[0] / GIB,
        )
    settings, offload = fold(taken)
    return ", ".join(label for label, _, _ in taken) or "nothing", settings, offload, best[0] / GIB


def planned_config(cfg: DictConfig, settings: dict[str, Any], offload: str) -> DictConfig:
    """``cfg`` with the plan's memory settings and offload mode: a new value, ``cfg`` is left as it is."""
    plan: dict[str, Any] = {"memory": dict(settings)}
    if offload != cfg.offload.mode:
        plan["offload"] = {"mode": offload}
    return OmegaConf.merge(cfg, plan)


def workload(cfg: DictConfig, chain: Any, geometry: AudioGeometry, least: bool = False) -> Workload:
    """The device work of one call of the chain (``generator.ChainPreview``) at this audio geometry.

    ``least``: the least the call can need, for refusing what cannot fit at all: attention traced as a fused kernel
    on every device (the CPU's SDPA holds no scores either, when it can use its flash kernel) and no margin.
    """
    placements = chain.placements
    if "denoiser" not in placements:
        raise ConfigError("memory.budget_gb", "needs a denoiser stage in the chain")
    device = placements["denoiser"][0]
    waveforms = chain.num_prompts * int(cfg.num_waveforms)
    unet_rows = waveforms * (2 if float(cfg.guidance_scale) > 1.0 else 1)
    twins = chain.meta_modules()
    attention = chain.optimizations.get("attention")

    def module(stage: str, component: str) -> torch.nn.Module | None:
        return twins.get(stage, {}).get(component)

    def fused(stage: str) -> bool:
        return least or (attention is not None and attention.fused_on(stage, placements[stage][0].type))

    tracer = ActivationTracer(
        geometry,
        unet_rows,
        waveforms,
        unet=module("denoiser", "unet"),
        vae=module("vae_decoder", "vae"),
        vocoder=module("vocoder", "vocoder"),
        dtypes={name: dtype for name, (_, dtype) in placements.items()},
        fused={
            "denoiser": fused("denoiser"),
            "vae_decoder": least or ("vae_decoder" in placements and placements["vae_decoder"][0].type == "cuda"),
        },
        margin={
            name: ACCELERATOR_MARGIN if dev.type != "cpu" and not least else 1.0
            for name, (dev, _) in placements.items()
        },
    )
    on_device = {name: mods for name, mods in twins.items() if placements[name][0] == device}
    return Workload(
        unet_rows=unet_rows, waveforms=waveforms, weight_bytes=stage_weight_bytes(on_device), activations=tracer
    )


def plan_for_chain(cfg: DictConfig, chain: Any) -> tuple[DictConfig, dict[str, Any]]:
    """Plan ``memory.budget_gb`` for a chain before it loads: the config to build it with (a new value) and the
    plan's record (logged, and kept in ``benchmark.json`` to compare the estimate with the measured peak)."""
    entries = {e.name: e for e in chain.entries}
    if "denoiser" not in entries:
        raise ConfigError("memory.budget_gb", "needs a denoiser stage in the chain")
    geometry = store_geometry(chain.store, cfg.audio_length_s, entries["denoiser"].settings.length_bucket_s)
    work = workload(cfg, chain, geometry)
    plan = chain.plan

    def allowed(mode: str) -> bool:
        offload = plan.optimizations.get("offload")
        if offload is None:
            return False
        trial = dataclasses.replace(plan, optimizations={**plan.optimizations, "offload": _with_mode(offload, mode)})
        try:
            check_plan(trial)
        except ConfigError:
            return False
        return True

    on_accelerator = chain.placements["denoiser"][0].type != "cpu"
    label, settings, offload, estimate = plan_memory(cfg, work, on_accelerator, allowed)
    chosen = ", ".join(f"memory.{k}={v}" for k, v in settings.items()) or "no memory option"
    log.info(
        "memory.budget_gb=%s: %s (%s, offload=%s), estimated peak %.2f GiB",
        cfg.memory.budget_gb,
        label,
        chosen,
        offload,
        estimate,
    )
    record = {
        "budget_gb": float(cfg.memory.budget_gb),
        "steps": label,
        "settings": settings,
        "offload": offload,
        "estimated_peak_gib": estimate,
    }
    return planned_config(cfg, settings, offload), record


def _with_mode(offload: Any, mode: str) -> Any:
    trial = dataclasses.replace(offload, mode=mode)
    object.__setattr__(trial, "key", offload.key)
    return trial
