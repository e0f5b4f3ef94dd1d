"""Where each stage runs and in which dtype, resolved from ``device``, ``precision`` and ``stages.<name>``.

Names only (``"cuda:0"``, ``"bf16"``): the stages turn them into torch objects when they are built.
"""

from __future__ import annotations

from omegaconf import DictConfig

from ..runtime.devices import Probe, probe_device, resolve_device_name

HALF = ("fp16", "bf16")


def precision_dtype_name(precision: str, device: str, probe: Probe = probe_device) -> str:
    """``auto``: bf16 on a CUDA GPU that has it, fp16 on other CUDA GPUs, fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.split(":")[0] == "cuda":
        info = probe("cuda")
        return "bf16" if info is not None and info.bf16 else "fp16"
    return "fp32"


def placement(cfg: DictConfig, stage: str, probe: Probe = probe_device) -> tuple[str, str]:
    """(device, dtype name) of a stage.

    Device: ``stages.<stage>.device``, else the top-level ``device``. Dtype: ``stages.<stage>.dtype``, else fp32 for
    the stages in ``precision.keep_fp32`` when the precision is half, else the precision group's dtype.
    """
    scfg = cfg.stages.get(stage) or {}
    device = resolve_device_name(scfg.get("device") or cfg.device, probe)
    if scfg.get("dtype"):
        return device, str(scfg.dtype)
    dtype = precision_dtype_name(str(cfg.precision.dtype), device, probe)
    if dtype in HALF and stage in (cfg.precision.get("keep_fp32") or []):
        dtype = "fp32"
    return device, dtype


def dtype_key(cfg: DictConfig, stage: str) -> str:
    """The key that chose a stage's dtype, for messages."""
    return f"stages.{stage}.dtype" if (cfg.stages.get(stage) or {}).get("dtype") else "precision"
