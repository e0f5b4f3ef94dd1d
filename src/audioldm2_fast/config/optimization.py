"""What an optimisation is, and how the config finds them.

An optimisation is one module and one config node. The node's YAML names the module's settings class in
``_target_`` (as a Hydra ``instantiate`` target); that class is a dataclass schema (its keys, types, allowed modes and
bounds, see :mod:`.fields`) and a subclass of :class:`Optimization`, whose methods are its compatibility rule and the
hooks through which it applies itself to the chain. Nothing in the package lists the optimisations: whatever node in
the composed config carries a ``_target_`` to such a class is one, so an optimisation from outside the package (its
module on ``PYTHONPATH``, its config group on ``hydra.searchpath``) takes part exactly as the built-in ones do.

The modules are imported to read their schema and rule, so they must import cheaply: torch and the model libraries
are imported inside the hooks that touch tensors, never at module level.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import DictConfig

from ..runtime.devices import DeviceInfo, Probe
from ..runtime.errors import ConfigError
from .fields import check_node

if TYPE_CHECKING:
    from ..stages.base import Stage

TARGET = "_target_"


@dataclass(frozen=True)
class Plan:
    """What rules look at: the config, the device probe, each chain stage's (device, dtype name) and the typed
    settings of every optimisation, by config key."""

    cfg: DictConfig
    probe: Probe
    placements: dict[str, tuple[str, str]]
    optimizations: Mapping[str, Optimization] = field(default_factory=dict)

    def info(self, device: str) -> DeviceInfo | None:
        return self.probe(device.split(":")[0])

    def device_type(self, stage: str) -> str:
        return self.placements[stage][0].split(":")[0]

    def setting(self, key: str, name: str, default: Any = None) -> Any:
        """``<key>.<name>`` of an optimisation, or ``default`` when the config has no such optimisation."""
        opt = self.optimizations.get(key)
        return getattr(opt, name, default) if opt is not None else default

    def on_accelerator(self) -> bool:
        return any(device.split(":")[0] in ("cuda", "mps") for device, _ in self.placements.values())


class Optimization:
    """Base of an optimisation's settings class (subclasses are ``@dataclass(kw_only=True)`` schemas).

    Rules: ``check(plan)`` and ``check_stages(classes)`` raise ``ConfigError`` naming the setting to change.
    Hooks, called by the Generator in this order: ``resolve`` before anything loads, ``load_device`` while stages
    load, ``setup`` once they are loaded, then around every stage call ``before`` / ``context`` / ``after``, and
    ``teardown`` when the Generator closes. Each does nothing by default.
    """

    #: The config key this optimisation's node sits at; set by :func:`find_optimizations`.
    key: str = ""
    #: Hooks run in increasing ``order``: what swaps modules' code (attention processors) before what places weights
    #: (offload) before what wraps modules (compile, graphs).
    order: ClassVar[int] = 50

    def check(self, plan: Plan) -> None:
        """Refuse settings that cannot work together (with a message naming the setting to change)."""

    def check_stages(self, classes: Mapping[str, type[Stage]]) -> None:
        """Refuse settings that the chain's stage classes (by stage name) cannot take. Runs before loading."""

    def resolve(self, cfg: DictConfig, chain: Any) -> tuple[DictConfig, dict[str, Any] | None]:
        """The config to build the chain with: ``cfg`` itself, or a new value holding this optimisation's choices
        (a memory plan, say), and a record of what it chose for the run's records. ``chain`` describes the chain
        before anything loads (``generator.ChainPreview``)."""
        return cfg, None

    def load_device(self, stage: Stage) -> str | None:
        """Where ``stage`` should build its weights before ``setup`` places them (None: on its own device)."""
        return None

    def setup(self, stages: list[Stage]) -> None:
        """Apply to the loaded stages (placement, processors, compiled modules, hooks)."""

    def context(self, stage: Stage) -> contextlib.AbstractContextManager:
        """A context around one call of ``stage``."""
        return contextlib.nullcontext()

    def before(self, stage: Stage) -> None:
        """Just before ``stage`` runs."""

    def after(self, stage: Stage) -> None:
        """Just after ``stage`` ran (its device work finished)."""

    def teardown(self) -> None:
        """Release what ``setup`` took."""


def _import_target(target: Any, key: str) -> type[Optimization]:
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{key}.{TARGET}", f"must name a class as package.module.Class (got {target!r})")
    module_name, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}.{TARGET}", f"cannot import {target!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Optimization)):
        raise ConfigError(f"{key}.{TARGET}", f"{target!r} is not an audioldm2_fast Optimization")
    return cls


def optimization_keys(cfg: DictConfig) -> Iterator[str]:
    """Top-level keys whose node names a ``_target_``."""
    for key in cfg:
        node = cfg.get(key)
        if isinstance(node, DictConfig) and TARGET in node:
            yield str(key)


def find_optimizations(cfg: DictConfig) -> dict[str, Optimization]:
    """The typed settings of every optimisation in ``cfg``, checked against their schema, by config key."""
    found: dict[str, Optimization] = {}
    for key in optimization_keys(cfg):
        node = cfg[key]
        cls = _import_target(node[TARGET], key)
        opt = check_node(node, cls, key, ignore=(TARGET,))
        object.__setattr__(opt, "key", key)
        found[key] = opt
    return dict(sorted(found.items(), key=lambda item: item[1].order))
