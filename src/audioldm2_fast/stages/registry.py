"""Stage registry: names to Stage classes (the built-in ones and those ``register_stage`` adds), and the check that
a configured chain can run: every stage importable, its settings valid, and every field it reads written before it."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from ..config.fields import check_node
from ..runtime.errors import ConfigError
from .state import REQUEST_FIELDS

if TYPE_CHECKING:
    from .base import Stage

#: The built-in stages, imported when a chain first names them.
BUILTIN = {
    "text_encoders": "audioldm2_fast.stages.text_encoders:TextEncoders",
    "prior": "audioldm2_fast.stages.prior:Prior",
    "denoiser": "audioldm2_fast.stages.denoiser:Denoiser",
    "vae_decoder": "audioldm2_fast.stages.vae_decoder:VaeDecoder",
    "vocoder": "audioldm2_fast.stages.vocoder:Vocoder",
    "ranker": "audioldm2_fast.stages.ranker:Ranker",
    "writer": "audioldm2_fast.stages.writer:Writer",
}
#: Stages registered by name (``register_stage``), and built-in ones once imported.
STAGES: dict[str, type[Stage]] = {}


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_stage(name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Register a Stage class under ``name`` so that config can refer to it (``stages.<x>.impl=<name>``)."""

    def decorator(cls: type[Stage]) -> type[Stage]:
        taken = STAGES.get(name)
        owner = _path(taken) if taken is not None else BUILTIN.get(name)
        if owner is not None and owner != _path(cls):
            raise ValueError(f"stage {name!r} is already registered by {owner}")
        STAGES[name] = cls
        return cls

    return decorator


def resolve_stage_class(impl: object, key: str = "stages.<name>.impl") -> type[Stage]:
    """A registered or built-in name, or ``package.module:Class`` naming any importable Stage subclass."""
    if not isinstance(impl, str) or not impl:
        raise ConfigError(key, f"must name a registered stage or 'package.module:Class' (got {impl!r})")
    if impl in STAGES:
        return STAGES[impl]
    if impl in BUILTIN:
        STAGES[impl] = _import_stage(BUILTIN[impl], key)
        return STAGES[impl]
    if ":" not in impl:
        names = ", ".join(sorted({*BUILTIN, *STAGES}))
        raise ConfigError(key, f"unknown stage {impl!r}; registered: {names}")
    return _import_stage(impl, key)


def _import_stage(impl: str, key: str) -> type[Stage]:
    from .base import Stage  # torch, with the stage class itself: a bad name above is refused without it

    module_name, _, attr = impl.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(key, f"cannot import {impl!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(key, f"{impl!r} is not a subclass of audioldm2_fast.stages.Stage")
    if cls.__call__ is Stage.__call__:
        raise ConfigError(key, f"{impl!r} implements nothing: a Stage subclass must define __call__(state)")
    return cls


@dataclasses.dataclass(frozen=True)
class ChainEntry:
    """One stage of a configured chain, before anything is loaded: its class and its typed settings."""

    name: str
    cls: type[Stage]
    settings: object


def check_chain(cfg: DictConfig, optimizations: Mapping[str, object] = ()) -> list[ChainEntry]:
    """The chain's stage classes and settings, or a ConfigError: a stage that cannot be imported, a settings key its
    class does not take, a field read before any stage (or the request) writes it, or an optimisation setting the
    stage classes cannot take (``Optimization.check_stages``)."""
    for name in cfg.pipeline.chain:  # names first: an unknown one is refused before any stage class is imported
        impl = cfg.stages[name].get("impl")
        if isinstance(impl, str) and ":" not in impl and impl not in BUILTIN and impl not in STAGES:
            resolve_stage_class(impl, key=f"stages.{name}.impl")
    entries: list[ChainEntry] = []
    written = set(REQUEST_FIELDS)
    for name in cfg.pipeline.chain:
        node = cfg.stages[name]
        cls = resolve_stage_class(node.get("impl"), key=f"stages.{name}.impl")
        settings = check_node(node, cls.Settings, f"stages.{name}")
        missing = [f for f in cls.reads if f not in written]
        if missing:
            writers = sorted(n for n in cfg.stages if _writes(cfg, n, missing[0]))
            hint = f"; {', '.join(writers)} write(s) it" if writers else ""
            raise ConfigError(
                "pipeline.chain",
                f"stage {name!r} reads {missing[0]!r}, which no stage before it writes "
                f"(chain {list(cfg.pipeline.chain)}{hint})",
            )
        written.update(cls.writes)
        entries.append(ChainEntry(name, cls, settings))
    classes = {e.name: e.cls for e in entries}
    for opt in dict(optimizations).values():
        opt.check_stages(classes)
    return entries


def _writes(cfg: DictConfig, name: str, field: str) -> bool:
    try:
        return field in resolve_stage_class(cfg.stages[name].get("impl")).writes
    except ConfigError:
        return False
