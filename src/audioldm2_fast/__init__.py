"""audioldm2-fast: fast, configurable AudioLDM 2 text-to-audio and text-to-music inference."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Generator", "GenerationResult", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `audioldm2-fast --help` and config validation do not import diffusers.
    if name in ("Generator", "GenerationResult"):
        from . import generator

        return getattr(generator, name)
    raise AttributeError(name)
