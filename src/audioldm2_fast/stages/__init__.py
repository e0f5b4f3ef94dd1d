"""Stages of the text-to-audio chain and their registry."""

from .base import Stage
from .registry import STAGES, register_stage, resolve_stage_class

__all__ = ["STAGES", "Stage", "register_stage", "resolve_stage_class"]
