"""The ``compile`` group: ``torch.compile`` on the modules of the stages listed in ``compile.stages``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

if TYPE_CHECKING:
    from .stages.base import Stage

log = logging.getLogger(__name__)


def compile_stage(stage: Stage, ccfg: DictConfig) -> int:
    """Replace each of the stage's compile targets by its compiled wrapper; return how many were compiled."""
    if ccfg.mode == "none" or stage.name not in ccfg.stages:
        return 0
    mode = None if ccfg.mode == "default" else str(ccfg.mode)
    count = 0
    for owner, attr in stage.compile_targets():
        module = owner[attr] if isinstance(owner, dict) else getattr(owner, attr)
        if isinstance(module, torch._dynamo.eval_frame.OptimizedModule):
            continue  # shared with a stage compiled before
        compiled = torch.compile(module, mode=mode, fullgraph=bool(ccfg.fullgraph), dynamic=ccfg.get("dynamic"))
        if isinstance(owner, dict):
            owner[attr] = compiled
        else:
            setattr(owner, attr, compiled)
        count += 1
    log.info("compile=%s: %d module(s) of stage %s", ccfg.mode, count, stage.name)
    return count
