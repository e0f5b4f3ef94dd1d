"""Stage registry: a plain dict from name to Stage class, filled by the ``register_stage`` decorator."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..runtime.errors import ConfigError
from .base import Stage

STAGES: dict[str, type[Stage]] = {}


def register_stage(name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Register a Stage class under ``name`` so that config can refer to it (``stages.<x>.impl=<name>``)."""

    def decorator(cls: type[Stage]) -> type[Stage]:
        if name in STAGES and STAGES[name] is not cls:
            raise ValueError(f"stage {name!r} is already registered by {STAGES[name].__qualname__}")
        STAGES[name] = cls
        return cls

    return decorator


def resolve_stage_class(impl: object, key: str = "stages.<name>.impl") -> type[Stage]:
    """A registered name, or ``package.module:Class`` naming any importable Stage subclass."""
    from . import builtin  # noqa: F401 - registers the built-in stages

    if not isinstance(impl, str) or not impl:
        raise ConfigError(key, f"must name a registered stage or 'package.module:Class' (got {impl!r})")
    if impl in STAGES:
        return STAGES[impl]
    if ":" not in impl:
        raise ConfigError(key, f"unknown stage {impl!r}; registered: {', '.join(sorted(STAGES))}")
    module_name, _, attr = impl.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(key, f"cannot import {impl!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(key, f"{impl!r} is not a subclass of audioldm2_fast.stages.Stage")
    return cls
