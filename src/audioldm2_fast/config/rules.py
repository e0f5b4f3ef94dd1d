"""Combinations of settings that cannot work, refused before anything loads, each with its reason.

Every rule is a small function over a ``Plan`` (the resolved device and dtype of each stage in the chain); the first
rule that fails raises ``ConfigError`` naming the setting to change.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from ..runtime.devices import DeviceInfo, Probe
from ..runtime.errors import ConfigError

ATTENTION_BACKENDS = ("sdpa", "math", "flash", "efficient", "cudnn", "sliced", "xformers")
COMPILE_MODES = ("none", "auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
OFFLOAD_MODES = ("none", "model", "sequential", "group")
# Stages with something to compile (see each Stage.compile_targets).
COMPILABLE = ("text_encoders", "prior", "denoiser", "vae_decoder", "vocoder")
HALF = (torch.float16, torch.bfloat16)


@dataclass
class Plan:
    cfg: DictConfig
    probe: Probe
    placements: dict[str, tuple[torch.device, torch.dtype]]

    def info(self, device: torch.device) -> DeviceInfo | None:
        return self.probe(device.type)

    def attention_stages(self) -> list[str]:
        listed = self.cfg.attention.get("stages") or []
        return [s for s in listed if s in self.placements]


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def _dtype_key(plan: Plan, stage: str) -> str:
    return f"stages.{stage}.dtype" if plan.cfg.stages[stage].get("dtype") else "precision"


def rule_half_precision_supported(plan: Plan) -> None:
    for stage, (device, dtype) in plan.placements.items():
        if device.type == "cpu" and dtype == torch.float16:
            raise ConfigError(
                _dtype_key(plan, stage), f"fp16 is not supported on the CPU (stage {stage}); use fp32 or bf16"
            )
        if device.type == "cuda" and dtype == torch.bfloat16:
            info = plan.info(device)
            if info is not None and not info.bf16:
                raise ConfigError(
                    _dtype_key(plan, stage),
                    f"{info.name} has no bf16 support (stage {stage}); use fp16 or precision=auto",
                )


def rule_attention_backend(plan: Plan) -> None:
    backend = plan.cfg.attention.get("backend")
    if backend not in ATTENTION_BACKENDS:
        raise ConfigError("attention.backend", f"{backend!r} is unknown; choose one of {', '.join(ATTENTION_BACKENDS)}")
    stages = plan.cfg.attention.get("stages")
    if not isinstance(stages, (list, ListConfig)) or any(s not in plan.cfg.stages for s in stages):
        raise ConfigError("attention.stages", f"must be a list of stage names (got {stages!r})")
    for stage in plan.attention_stages():
        device, dtype = plan.placements[stage]
        info = plan.info(device)
        where = f"attention={backend}"
        if backend in ("efficient", "cudnn", "xformers") and device.type != "cuda":
            raise ConfigError("attention", f"{where} needs a CUDA GPU, but stage {stage} runs on {device.type}")
        if backend == "flash" and device.type == "mps":
            raise ConfigError("attention", f"{where} has no MPS kernel (stage {stage}); use attention=sdpa")
        if device.type != "cuda" or info is None:
            continue
        if backend in ("flash", "cudnn") and (info.capability or (0, 0)) < (8, 0):
            cap = ".".join(map(str, info.capability or (0, 0)))
            raise ConfigError("attention", f"{where} needs an sm80+ GPU; {info.name} is sm{cap}")
        if backend == "flash" and dtype not in HALF:
            raise ConfigError(
                "attention", f"{where} needs fp16 or bf16 on CUDA, but stage {stage} is {_dtype_name(dtype)}"
            )
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        raise ConfigError("attention", "attention=xformers needs the xformers package (pip install xformers)")
    if backend == "cudnn" and not hasattr(torch.nn.attention.SDPBackend, "CUDNN_ATTENTION"):
        raise ConfigError("attention", f"attention=cudnn needs a newer torch than {torch.__version__}")


def rule_memory(plan: Plan) -> None:
    memory = plan.cfg.get("memory") or {}
    backend = plan.cfg.attention.backend
    if memory.get("attention_chunk_size") is not None and backend in ("sliced", "xformers"):
        raise ConfigError(
            "memory.attention_chunk_size",
            f"replaces the UNet's attention processors, as attention={backend} does; use one of the two",
        )


def rule_compile(plan: Plan) -> None:
    ccfg = plan.cfg.compile
    mode = ccfg.get("mode")
    if mode not in COMPILE_MODES:
        raise ConfigError("compile.mode", f"{mode!r} is unknown; choose one of {', '.join(COMPILE_MODES)}")
    stages = ccfg.get("stages")
    if not isinstance(stages, (list, ListConfig)):
        raise ConfigError("compile.stages", f"must be a list of stage names (got {stages!r})")
    for stage in stages:
        if stage not in COMPILABLE:
            raise ConfigError("compile.stages", f"stage {stage!r} has nothing to compile; choose from {COMPILABLE}")
    if not isinstance(ccfg.get("fullgraph"), bool):
        raise ConfigError("compile.fullgraph", f"must be true or false (got {ccfg.get('fullgraph')!r})")
    if not isinstance(ccfg.get("backend", "inductor"), str):
        raise ConfigError("compile.backend", f"must be a torch.compile backend name (got {ccfg.get('backend')!r})")
    if ccfg.get("dynamic") not in (None, True, False):
        raise ConfigError("compile.dynamic", f"must be null, true or false (got {ccfg.get('dynamic')!r})")
    bucket = ccfg.get("length_bucket_s")
    if bucket is not None and (isinstance(bucket, bool) or not isinstance(bucket, int | float) or bucket <= 0):
        raise ConfigError("compile.length_bucket_s", f"must be null or a positive number of seconds (got {bucket!r})")
    cache_dir = ccfg.get("cache_dir")
    if cache_dir is not None and (not isinstance(cache_dir, str) or Path(cache_dir).expanduser().is_file()):
        raise ConfigError("compile.cache_dir", f"must be null or a directory path (got {cache_dir!r})")
    if mode == "auto":  # the mode each compiled stage will really get
        from ..accel.compile import effective_mode

        modes = {effective_mode(mode, plan.placements[s][0]) for s in stages if s in plan.placements}
        mode = next((m for m in modes if m != "none"), "none")
    if mode == "none":
        return
    offload = plan.cfg.offload.get("mode")
    if offload in ("sequential", "group") and mode in CUDA_GRAPH_MODES:
        raise ConfigError(
            "compile",
            f"compile={mode} records CUDA graphs over fixed weight addresses, but offload={offload} moves weights "
            "during every forward; use compile=default or max-autotune-no-cudagraphs, or offload=model",
        )
    if offload in ("sequential", "group") and ccfg.fullgraph:
        raise ConfigError("compile.fullgraph", f"offload={offload} hooks break the graph; set compile.fullgraph=false")
    if plan.cfg.attention.get("backend") == "sliced" and ccfg.fullgraph and "denoiser" in stages:
        raise ConfigError("compile.fullgraph", "attention=sliced loops in Python over slices; set fullgraph=false")


def rule_offload(plan: Plan) -> None:
    ocfg = plan.cfg.offload
    mode = ocfg.get("mode")
    if mode not in OFFLOAD_MODES:
        raise ConfigError("offload.mode", f"{mode!r} is unknown; choose one of {', '.join(OFFLOAD_MODES)}")
    if mode == "none":
        return
    if ocfg.get("offload_device", "cpu") != "cpu":
        raise ConfigError("offload.offload_device", "only cpu is supported")
    if not any(device.type in ("cuda", "mps") for device, _ in plan.placements.values()):
        raise ConfigError(
            "offload",
            f"offload={mode} moves weights between the CPU and an accelerator, but every stage runs on the CPU; "
            "use offload=none (or run on a GPU)",
        )
    if mode == "group":
        if ocfg.get("offload_type") not in ("block_level", "leaf_level"):
            raise ConfigError("offload.offload_type", "must be block_level or leaf_level")
        if ocfg.get("use_stream") and not any(d.type == "cuda" for d, _ in plan.placements.values()):
            raise ConfigError("offload.use_stream", "streams need CUDA; set offload.use_stream=false")


def rule_scheduler_dependencies(plan: Plan) -> None:
    if plan.cfg.scheduler.get("class_name") == "DPMSolverSDEScheduler" and importlib.util.find_spec("torchsde") is None:
        raise ConfigError("scheduler", "scheduler=dpm_sde needs the torchsde package (pip install torchsde)")


RULES: list[Callable[[Plan], None]] = [
    rule_half_precision_supported,
    rule_attention_backend,
    rule_compile,
    rule_memory,
    rule_offload,
    rule_scheduler_dependencies,
]


def check_combinations(cfg: DictConfig, probe: Probe) -> None:
    from .validate import stage_placement

    placements = {name: stage_placement(cfg, name, probe) for name in cfg.pipeline.chain}
    plan = Plan(cfg=cfg, probe=probe, placements=placements)
    for rule in RULES:
        rule(plan)
