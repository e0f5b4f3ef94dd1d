"""``audioldm2-fast --help``: the groups with their options and the keys with their defaults and meanings, read from
the config files themselves (their comments are the documentation), without composing a config.

Hydra's own ``--help`` composes the config once per group to list it, which takes seconds; ``--hydra-help`` still
shows Hydra's flags.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..runtime.errors import PROG
from .paths import conf_dir, config_groups

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*?)\s*(?:#\s*(?P<doc>.*))?$")


def key_lines(config_file: Path) -> list[tuple[str, str, str]]:
    """(dotted key, default, comment) of every leaf key of a YAML file, in file order."""
    rows: list[tuple[str, str, str]] = []
    parents: list[tuple[int, str]] = []
    for line in config_file.read_text().splitlines():
        match = _KEY.match(line)
        if not match or match["key"] in ("defaults", "hydra"):
            if match and not match["indent"]:
                parents = [(0, match["key"])]
            continue
        indent = len(match["indent"])
        parents = [(i, k) for i, k in parents if i < indent]
        if any(k in ("defaults", "hydra") for _, k in parents):
            continue
        key = ".".join([*(k for _, k in parents), match["key"]])
        value = match["value"].strip()
        if value and not key.endswith("_target_"):
            rows.append((key, value, (match["doc"] or "").strip()))
        parents.append((indent, match["key"]))
    return rows


def help_text(extra_dirs: tuple[Path, ...] = ()) -> str:
    groups = config_groups(*extra_dirs)
    lines = [
        f"usage: {PROG} [KEY=VALUE ...] [GROUP=OPTION ...] [-m] [--cfg job] [--config-dir DIR] [--hydra-help]",
        "",
        "Fast AudioLDM 2 text-to-audio and text-to-music. Examples:",
        f'  {PROG} prompt="rain on a tin roof" precision=fp16 scheduler=dpmpp_2m steps=20',
        f"  {PROG} -m checkpoint=tiny prompt=rain precision=fp32 scheduler=ddim,dpmpp_2m   # a sweep",
        f"  {PROG} task=doctor                                  # what this environment can run",
        "",
        "Config groups (GROUP=OPTION):",
        *(f"  {name:<12} {', '.join(options)}" for name, options in groups.items()),
        "",
        "Keys (KEY=VALUE; defaults as shipped; --cfg job prints every key of a run):",
    ]
    rows = key_lines(conf_dir() / "config.yaml")
    width = max(len(f"{k}={v}") for k, v, _ in rows)
    lines += [f"  {f'{k}={v}':<{width}}  {doc}".rstrip() for k, v, doc in rows]
    lines += [
        "",
        "Flags: -m/--multirun (sweep comma-separated values), --cfg job|hydra|all (print the config), "
        "-sc install=bash (shell completion), --config-dir DIR / --config-name NAME (your own configs), "
        "--hydra-help (Hydra's flags).",
        "More: README.md, sections Command line, Config groups, Batch generation, How it fits together.",
    ]
    return "\n".join(lines)
