"""Build the configured scheduler from the checkpoint's own scheduler config."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..runtime.errors import ConfigError


def scheduler_class(scfg: DictConfig) -> type:
    """The diffusers scheduler class named by ``scheduler.class_name``; it must be one AudioLDM 2 can use."""
    import diffusers
    from diffusers.schedulers import KarrasDiffusionSchedulers

    name = scfg.get("class_name")
    compatible = {s.name for s in KarrasDiffusionSchedulers}
    if not isinstance(name, str) or name not in compatible or not hasattr(diffusers, name):
        raise ConfigError("scheduler.class_name", f"{name!r} is not a scheduler AudioLDM 2 can use")
    return getattr(diffusers, name)


def build_scheduler(scfg: DictConfig, checkpoint_config: dict[str, Any]) -> Any:
    """A fresh scheduler: ``Class.from_config(checkpoint config)`` plus the option's own ``config`` values."""
    cls = scheduler_class(scfg)
    extra = scfg.get("config")
    extra = OmegaConf.to_container(extra, resolve=True) if extra else {}
    return cls.from_config(checkpoint_config, **extra)


def num_steps(cfg: DictConfig) -> int:
    """``steps``, or the scheduler option's default when ``steps`` is null."""
    return int(cfg.steps if cfg.get("steps") is not None else cfg.scheduler.default_steps)
