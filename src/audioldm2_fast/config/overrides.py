"""A command line read as Hydra reads it, before Hydra starts: flags, ``--config-dir``, ``--config-name`` and the
overrides, composed into the config of the run (or of a sweep's first job).

Hydra reports problems with a usage block or a traceback hint; here each one becomes a one-line ``ConfigError``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..runtime.errors import ConfigError
from .compose import compose_config
from .paths import conf_dir, config_groups

INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
#: Every flag of a Hydra app: True takes a value, False takes none, a set takes one of those values or none.
FLAGS: dict[str, bool | set[str]] = {
    "-h": False, "--help": False, "--hydra-help": False, "--version": False, "-c": True, "--cfg": True,
    "--resolve": False, "-p": True, "--package": True, "-r": False, "--run": False, "-m": False, "--multirun": False,
    "-sc": False, "--shell-completion": False, "-cp": True, "--config-path": True, "-cn": True, "--config-name": True,
    "-cd": True, "--config-dir": True, "--experimental-rerun": True,
    "-i": INFO_CHOICES, "--info": INFO_CHOICES,
}  # fmt: skip
#: Keys that ``+key=value`` may add: scheduler constructor values, and Hydra's own settings.
ADDABLE_PREFIXES = ("scheduler.config.", "hydra.")


@dataclass
class ConfigLocation:
    config_name: str = "config"
    config_dir: Path | None = None  # an extra directory searched for the primary config and group options


def check_flags(argv: Sequence[str]) -> ConfigLocation:
    """Refuse unknown flags and a ``--config-dir``/``--config-name`` that does not exist."""
    location = ConfigLocation()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            continue
        flag, eq, value = arg.partition("=")
        if flag not in FLAGS:
            raise ConfigError(flag, "unknown option (audioldm2-fast --help lists them)")
        takes = FLAGS[flag]
        if eq or takes is False:
            pass
        elif takes is True:
            if i >= len(args):
                raise ConfigError(flag, "needs a value")
            value, i = args[i], i + 1
        elif i < len(args) and args[i] in takes:
            value, i = args[i], i + 1
        if flag in ("-cd", "--config-dir"):
            path = Path(value).expanduser()
            if not path.is_dir():
                raise ConfigError(flag, f"{value!r} is not a directory")
            location.config_dir = path.resolve()
        elif flag in ("-cn", "--config-name"):
            location.config_name = value.removesuffix(".yaml")
    roots = [r for r in (location.config_dir, conf_dir()) if r is not None]
    if not any((root / f"{location.config_name}.yaml").is_file() for root in roots):
        where = " or ".join(str(r) for r in roots)
        raise ConfigError("--config-name", f"no {location.config_name}.yaml in {where}")
    return location


def check_added_key(key: str, known: object) -> None:
    """``+key=value`` may only add keys the config has a place for; ``known`` is the config without the additions."""
    if key.startswith(ADDABLE_PREFIXES):
        return
    if OmegaConf.select(known, key, default="__missing__") == "__missing__":
        raise ConfigError(key, "unknown key; '+' adds keys only under scheduler.config (--cfg job lists every key)")


#: Flags whose next argument is their value; flags that mean "do not run a job" (help, config printing, ...).
_VALUE_FLAGS = {flag for flag, takes in FLAGS.items() if takes is True}
_INFO_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion"}


@dataclass
class CommandLine:
    """A parsed command line: its overrides, whether it is a sweep, and whether it only asks for information."""

    overrides: list[str]
    multirun: bool
    info_only: bool
    location: ConfigLocation


def split_argv(argv: Sequence[str]) -> CommandLine:
    """Separate flags from overrides (and check the flags)."""
    location = check_flags(argv)
    overrides: list[str] = []
    multirun = info_only = False
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg.split("=")[0] in _INFO_FLAGS:
            info_only = True
        elif arg in _VALUE_FLAGS:
            skip_next = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return CommandLine(overrides, multirun, info_only, location)


def one_line(text: str) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line, without their bookkeeping lines."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type", "Set the environment"))]
    return re.sub(r"\s+", " ", "; ".join(lines))


def _searchpath_dirs(parsed: list) -> list[Path]:
    """The ``file://`` directories of a ``hydra.searchpath=[...]`` override: their groups count as ours."""
    dirs: list[Path] = []
    for override in parsed:
        if override.key_or_group == "hydra.searchpath":
            value = override.value()
            for entry in value if isinstance(value, list) else [value]:
                if isinstance(entry, str) and entry.startswith("file://"):
                    dirs.append(Path(entry.removeprefix("file://")))
    return dirs


def compose_command_line(argv: Sequence[str]) -> tuple[CommandLine, DictConfig | None]:
    """Refuse unknown flags, group options and keys, and compose the config of the run (a sweep's first job).

    Returns ``(command line, config)``; the config is None for information-only flags (``--help``, ``--cfg``, ...),
    which Hydra answers itself.
    """
    line = split_argv(argv)
    if line.info_only:
        return line, None
    try:
        parsed = OverridesParser.create().parse_overrides(line.overrides)
    except HydraException as exc:
        raise ConfigError("", f"cannot parse the overrides: {one_line(exc)}") from None

    groups = config_groups(line.location.config_dir, *_searchpath_dirs(parsed))
    first_values: list[str] = []
    for override in parsed:
        key = override.key_or_group
        if override.is_sweep_override():
            if not line.multirun:
                raise ConfigError(
                    key,
                    "a comma-separated value is a sweep: add -m to sweep it, "
                    f"or quote a value that contains commas ({key}=\"'a, b'\")",
                )
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()] if not override.is_delete() else []
        if key == "task" and line.multirun and "doctor" in values:
            raise ConfigError(key, "task=doctor checks the environment once: run it without -m")
        if key == "task" and line.multirun and "serve" in values:
            raise ConfigError(key, "task=serve runs one server: run it without -m")
        if key in groups:
            for value in values:
                if value not in groups[key]:
                    raise ConfigError(key, f"unknown option {value!r}; choose one of: {', '.join(groups[key])}")
        first = values[0] if values else None
        prefix = override.get_key_element()
        first_values.append(override.input_line if first is None else f"{prefix}={first}")

    def compose(values: list[str]) -> DictConfig:
        return compose_config(values, line.location.config_name, line.location.config_dir)

    try:
        added = [o for o in parsed if (o.is_add() or o.is_force_add()) and o.key_or_group not in groups]
        if added:
            known = compose([v for v, o in zip(first_values, parsed, strict=True) if o not in added])
            for override in added:
                check_added_key(override.key_or_group, known)
        cfg = compose(first_values)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"cannot read a config file: {one_line(exc)}") from None
    except (HydraException, OmegaConfBaseException) as exc:
        message = one_line(exc)
        match = re.search(r"Could not override '([^']+)'", message)
        if match:
            raise ConfigError(match.group(1), "unknown key (check the spelling; --cfg job lists every key)") from None
        raise ConfigError("", message) from None
    return line, cfg
