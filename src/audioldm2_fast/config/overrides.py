"""Checks on the parts of a command line that are not overrides: flags, ``--config-dir`` and ``--config-name``.

Hydra reports these with a usage block or a traceback hint; here each one becomes a one-line ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import ConfigError
from .paths import conf_dir

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
    from omegaconf import OmegaConf

    if key.startswith(ADDABLE_PREFIXES):
        return
    if OmegaConf.select(known, key, default="__missing__") == "__missing__":
        raise ConfigError(key, "unknown key; '+' adds keys only under scheduler.config (--cfg job lists every key)")
