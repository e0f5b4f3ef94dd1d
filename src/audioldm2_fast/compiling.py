"""The ``compile`` group: ``torch.compile`` on the modules of the stages listed in ``compile.stages``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

if TYPE_CHECKING:
    from .stages.base import Stage

log = logging.getLogger(__name__)


def _ignore_unet_logging() -> None:
    """The AudioLDM 2 UNet logs (``logger.info``) inside ``forward`` when a latent side is not a multiple of its
    up-sampling factor; a logging call breaks the graph (so ``fullgraph=True`` fails). Tell dynamo to skip it."""
    from diffusers.pipelines.audioldm2 import modeling_audioldm2

    config = torch._dynamo.config
    functions = getattr(config, "ignore_logging_functions", None)
    if functions is None:
        functions = getattr(config, "ignore_logger_methods", None)
    if functions is not None:
        unet_logger = modeling_audioldm2.logger
        functions.update({unet_logger.info, unet_logger.warning, unet_logger.debug})


def effective_mode(mode: str, device: torch.device) -> str:
    """``auto`` is reduce-overhead on CUDA and none elsewhere; other modes are themselves."""
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" else "none"
    return mode


def compile_stage(stage: Stage, ccfg: DictConfig) -> int:
    """Replace each of the stage's compile targets by its compiled wrapper; return how many were compiled."""
    chosen = effective_mode(str(ccfg.mode), stage.device)
    if chosen == "none" or stage.name not in ccfg.stages:
        return 0
    mode = None if chosen == "default" else chosen
    _ignore_unet_logging()
    count = 0
    for owner, attr in stage.compile_targets():
        module = owner[attr] if isinstance(owner, dict) else getattr(owner, attr)
        if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
            continue  # shared with a stage compiled before
        backend = ccfg.get("backend") or "inductor"
        options = {"mode": mode} if backend == "inductor" else {}
        compiled = torch.compile(
            module, backend=backend, fullgraph=bool(ccfg.fullgraph), dynamic=ccfg.get("dynamic"), **options
        )
        if isinstance(owner, dict):
            owner[attr] = compiled
        else:
            setattr(owner, attr, compiled)
        count += 1
    log.info("compile=%s: %d module(s) of stage %s", chosen, count, stage.name)
    return count
