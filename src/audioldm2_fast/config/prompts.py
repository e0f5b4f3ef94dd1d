"""Prompt values: what is a valid prompt, for ``prompt=``, ``negative_prompt=`` and every line of a prompts file."""

from __future__ import annotations

import unicodedata
from typing import Any

from omegaconf import ListConfig

from ..runtime.errors import ConfigError

#: Longest prompt accepted, in characters. Tokenizers keep only their first tokens (README, "Prompts").
MAX_PROMPT_CHARS = 10_000


def prompt_problem(text: str) -> str | None:
    """Why ``text`` is not a valid prompt (blank, a control character, too long), or None when it is one.

    Any other text is valid, right-to-left scripts and emoji included.
    """
    if not text.strip():
        return "must not be empty"
    if len(text) > MAX_PROMPT_CHARS:
        return f"is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}"
    for pos, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            return f"contains the control character U+{ord(char):04X} at position {pos}"
    return None


def check_prompt_text(text: str, key: str) -> None:
    """Raise ConfigError naming ``key`` when ``text`` is not a valid prompt."""
    problem = prompt_problem(text)
    if problem:
        raise ConfigError(key, problem)


def prompt_list(value: Any, key: str = "prompt") -> list[str]:
    """Normalise a prompt value (string or list of strings) to a non-empty list of valid prompts."""
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (list, tuple, ListConfig)):
        items = list(value)
    else:
        raise ConfigError(key, f"must be a string or a list of strings (got {type(value).__name__})")
    if not items:
        raise ConfigError(key, "must not be an empty list")
    for i, item in enumerate(items):
        where = key if isinstance(value, str) else f"{key}[{i}]"
        if not isinstance(item, str):
            raise ConfigError(where, f"must be a string (got {type(item).__name__})")
        check_prompt_text(item, where)
    return items


def negative_prompt_list(value: Any, num_prompts: int) -> list[str] | None:
    """None, one negative prompt for every prompt, or one per prompt. A negative prompt may be empty."""
    if value is None:
        return None
    if isinstance(value, str):
        _check_negative(value, "negative_prompt")
        return [value] * num_prompts
    if not isinstance(value, (list, tuple, ListConfig)):
        raise ConfigError("negative_prompt", f"must be a string or a list of strings (got {type(value).__name__})")
    items = list(value)
    if len(items) != num_prompts:
        raise ConfigError(
            "negative_prompt",
            f"has {len(items)} entries but prompt has {num_prompts}; give one per prompt or one string",
        )
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"negative_prompt[{i}]", f"must be a string (got {type(item).__name__})")
        _check_negative(item, f"negative_prompt[{i}]")
    return items


def _check_negative(text: str, key: str) -> None:
    problem = prompt_problem(text) if text.strip() else None  # "" is the stock pipeline's own negative prompt
    if problem:
        raise ConfigError(key, problem)
