"""Progress bars that show on a terminal and stay out of logs.

Every bar in the package goes through :func:`progress_bar`, so one switch (``progress=false``) and one rule
(bars only when stderr is a TTY) govern them all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(enabled: bool = True) -> bool:
    """True when progress is switched on and stderr is an interactive terminal."""
    stream = sys.stderr
    return bool(enabled) and bool(getattr(stream, "isatty", None) and stream.isatty())


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    enabled: bool = True,
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
        disable=not progress_enabled(enabled),
        dynamic_ncols=True,
        **kwargs,
    )
