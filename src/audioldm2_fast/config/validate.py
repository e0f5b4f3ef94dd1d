"""Validation of a composed config: the schema, then the rules. Nothing here imports torch or a model library.

``validate_config`` runs before any model is loaded and raises ``ConfigError`` naming the offending key. It returns
the typed settings, so that the caller never reads an unchecked value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from ..runtime.devices import Probe, probe_device
from ..runtime.errors import ConfigError
from .fields import check_node, check_resolvable
from .optimization import Optimization, Plan, find_optimizations, optimization_keys
from .placement import placement
from .rules import RULES
from .schema import Config, StagePlacement


@dataclass(frozen=True)
class Validated:
    """A config that passed: its typed root keys and its optimisations (by config key)."""

    settings: Config
    optimizations: dict[str, Optimization]
    plan: Plan


def check_schema(cfg: DictConfig) -> Config:
    """Types, allowed values, bounds and required keys of the root and of every ``stages.<name>`` entry."""
    settings = check_node(cfg, Config, ignore=tuple(optimization_keys(cfg)))
    base = ("impl", "device", "dtype")
    for name, node in cfg.stages.items():  # the stage's own keys are checked with its class (stages.registry)
        check_node(node, StagePlacement, f"stages.{name}", ignore=[k for k in node if k not in base])
    return settings


def validate_config(cfg: DictConfig, probe: Probe = probe_device, require_prompt: bool = True) -> Validated | None:
    """Check every user-settable value and their combinations; raise ConfigError naming the first offending key.

    ``probe`` describes the devices (tests pass one that describes hardware this machine does not have).
    ``require_prompt=False`` accepts a config without a prompt (a Generator built once and given prompts per call).
    The chain itself (its stage classes) is checked by ``stages.registry.check_chain``. Returns None for
    ``task=merge``, whose only setting is ``dir``.
    """
    check_resolvable(cfg)
    if cfg.get("task") == "merge":
        return _validate_merge(cfg)
    settings = check_schema(cfg)
    needs_prompt = require_prompt and settings.task not in ("doctor", "serve")  # a server's prompts come per request
    if needs_prompt and settings.prompt is None and settings.prompts_file is None:
        raise ConfigError("prompt", 'required, e.g. prompt="rain on a tin roof" (or prompts_file=prompts.txt)')
    optimizations = find_optimizations(cfg)
    placements = {name: placement(cfg, name, probe) for name in cfg.pipeline.chain if name in cfg.stages}
    plan = Plan(cfg=cfg, probe=probe, placements=placements, optimizations=optimizations)
    for rule in RULES:
        rule(plan)
    for opt in optimizations.values():
        opt.check(plan)
    return Validated(settings=settings, optimizations=optimizations, plan=plan)


def check_plan(plan: Plan) -> None:
    """Run every rule on a plan (the memory planner asks whether an offload mode it considers would pass)."""
    for rule in RULES:
        rule(plan)
    for opt in plan.optimizations.values():
        opt.check(plan)


def _validate_merge(cfg: DictConfig) -> None:
    value = cfg.get("dir")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("dir", "required with task=merge: the sweep or output dir holding the shard manifests")
    if not Path(value).expanduser().is_dir():
        raise ConfigError("dir", f"{value!r} is not a directory")
