"""Build the configured scheduler from the checkpoint's own scheduler config."""

from __future__ import annotations

from typing import Any

import diffusers
from omegaconf import DictConfig, OmegaConf

from ..config.schema import SchedulerConfig


def scheduler_class(class_name: str) -> type:
    """The diffusers scheduler class (the schema has already checked that AudioLDM 2 can use it)."""
    return getattr(diffusers, class_name)


def build_scheduler(scheduler: SchedulerConfig | DictConfig, checkpoint_config: dict[str, Any]) -> Any:
    """A fresh scheduler: ``Class.from_config(checkpoint config)`` plus the option's own ``config`` values."""
    extra = scheduler.config
    extra = OmegaConf.to_container(extra, resolve=True) if isinstance(extra, DictConfig) else dict(extra or {})
    return scheduler_class(str(scheduler.class_name)).from_config(checkpoint_config, **extra)


def num_steps(cfg: DictConfig) -> int:
    """``steps``, or the scheduler option's default when ``steps`` is null."""
    return int(cfg.steps if cfg.get("steps") is not None else cfg.scheduler.default_steps)
