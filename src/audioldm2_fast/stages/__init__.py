"""Stages of the text-to-audio chain, their state and registry, and the helpers they share.

``Stage`` and the registry's names are exported lazily: the command line reads the registry to check a chain's stage
names without importing torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STAGES", "Stage", "register_stage", "resolve_stage_class"]


def __getattr__(name: str) -> Any:
    if name == "Stage":
        from .base import Stage

        return Stage
    if name in ("STAGES", "register_stage", "resolve_stage_class"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(name)
