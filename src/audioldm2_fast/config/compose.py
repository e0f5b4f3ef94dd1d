"""Compose the app's config with Hydra, as the command line does, without starting a Hydra run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from .paths import conf_dir


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "config", config_dir: Path | None = None
) -> DictConfig:
    """The composed config for ``overrides``. ``config_dir`` is searched as ``--config-dir`` is: for the primary
    config and for group options."""
    extra = [f"hydra.searchpath=[file://{config_dir}]"] if config_dir is not None else []
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*extra, *overrides])
