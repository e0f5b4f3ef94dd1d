"""Build the configured scheduler from the checkpoint's own scheduler config, and check it before anything loads."""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
import torch
from omegaconf import DictConfig, OmegaConf

from ..config.schema import SchedulerConfig
from ..runtime.errors import CheckpointError, ConfigError


def scheduler_class(class_name: str) -> type:
    """The diffusers scheduler class (the schema has already checked that AudioLDM 2 can use it)."""
    return getattr(diffusers, class_name)


def build_scheduler(scheduler: SchedulerConfig | DictConfig, checkpoint_config: dict[str, Any]) -> Any:
    """A fresh scheduler: ``Class.from_config(checkpoint config)`` plus the option's own ``config`` values."""
    return scheduler_class(str(scheduler.class_name)).from_config(checkpoint_config, **_extra(scheduler))


def _extra(scheduler: SchedulerConfig | DictConfig) -> dict[str, Any]:
    extra = scheduler.config
    return OmegaConf.to_container(extra, resolve=True) if isinstance(extra, DictConfig) else dict(extra or {})


def check_scheduler(
    scheduler: SchedulerConfig, checkpoint_config: dict[str, Any], steps: int, eta: float = 0.0, where: str = ""
) -> None:
    """Refuse, before anything loads, a scheduler that cannot run: ``scheduler.config`` keys its class does not take
    (``from_config`` would drop them silently), values it rejects, or a number of steps it cannot make.

    The values are judged by the scheduler itself: it is built, and its whole schedule is run once on a one-element
    tensor, as the denoiser runs it. ``where`` names the checkpoint's scheduler config file, blamed when it is the
    checkpoint's own values that fail.
    """
    cls = scheduler_class(str(scheduler.class_name))
    params = inspect.signature(cls.__init__).parameters
    takes = sorted(n for n, p in params.items() if n != "self" and p.kind is not p.VAR_KEYWORD)
    extra = _extra(scheduler)
    for key in extra:
        if key not in takes:
            raise ConfigError(
                f"scheduler.config.{key}", f"{cls.__name__} has no such setting; it takes {', '.join(takes)}"
            )
    train_steps = int(checkpoint_config.get("num_train_timesteps") or 1000)
    if steps > train_steps:
        raise ConfigError("steps", f"{steps} is more than the {train_steps} timesteps the scheduler was trained with")
    problem = _dry_run(cls, checkpoint_config, extra, steps, eta)
    if problem is None:
        return
    if _dry_run(cls, checkpoint_config, {}, steps, eta) is not None:
        if where:
            raise CheckpointError(f"checkpoint scheduler config {where}: {cls.__name__} cannot run with it: {problem}")
        raise ConfigError("steps", f"{cls.__name__} cannot run {steps} steps: {problem}")
    for key, value in extra.items():
        if _dry_run(cls, checkpoint_config, {key: value}, steps, eta) is not None:
            raise ConfigError(f"scheduler.config.{key}", f"{value!r} is refused by {cls.__name__}: {problem}")
    raise ConfigError("scheduler.config", f"{cls.__name__} cannot run with these values together: {problem}")


def _dry_run(cls: type, checkpoint_config: dict[str, Any], extra: dict[str, Any], steps: int, eta: float) -> str | None:
    """Why the scheduler cannot run ``steps`` steps with these values (None when it can)."""
    try:
        scheduler = cls.from_config(checkpoint_config, **extra)
        scheduler.set_timesteps(steps, device="cpu")
        params = set(inspect.signature(scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = torch.Generator("cpu").manual_seed(0)
        sample = torch.zeros(1, 1, 1, 1)
        for t in scheduler.timesteps:
            sample = scheduler.step(torch.zeros_like(scheduler.scale_model_input(sample, t)), t, sample, **kwargs)
            sample = sample.prev_sample
    except Exception as exc:  # noqa: BLE001 - whatever the scheduler raises is the reason it cannot run
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else 'no details'}"
    return None


def num_steps(cfg: DictConfig) -> int:
    """``steps``, or the scheduler option's default when ``steps`` is null."""
    return int(cfg.steps if cfg.get("steps") is not None else cfg.scheduler.default_steps)
