"""Progress bars that show on a terminal and stay out of logs.

Every bar in the package goes through :func:`progress_bar`, so one switch (``progress=false``) and one rule
(bars only when stderr is a TTY) govern them all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from omegaconf import DictConfig
from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(cfg: DictConfig | None) -> bool:
    """True when the config allows progress bars and stderr is an interactive terminal."""
    if cfg is not None and not bool(cfg.get("progress", True)):
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    cfg: DictConfig | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    leave: bool = False,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar, disabled (a plain pass-through) when :func:`progress_enabled` says no."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        disable=not progress_enabled(cfg),
        dynamic_ncols=True,
        **kwargs,
    )


def silence_library_bars() -> None:
    """Turn off diffusers' and transformers' own bars (weight loading): ours show loading per stage instead."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
