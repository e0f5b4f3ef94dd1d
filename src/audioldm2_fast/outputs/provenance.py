"""What a manifest row needs to reproduce its audio: library versions and the hash of the resolved config.

The hash is the sha256 of the resolved config as YAML, leaving out ``output.dir`` (where files go does not change
them), so two runs of the same settings share it whatever their run dirs. The YAML itself is saved next to the
manifest as ``config-<first 12 hex digits>.yaml``. Per-call request values (``generate(seed=...)``) are recorded in
the row itself.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import platform
from functools import cache
from pathlib import Path
from typing import Any

import soundfile
from omegaconf import DictConfig, OmegaConf

from ..runtime.devices import torch_version
from .files import write_new_bytes

LIBRARIES = ("torch", "diffusers", "transformers", "hydra-core", "omegaconf", "numpy", "soundfile", "safetensors")


def installed_version(dist: str) -> str | None:
    """The installed version of ``dist``; for torch its own ``__version__``, which keeps the build's local tag
    (``2.11.0+cu130``) that the distribution metadata of a PyPI wheel drops."""
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    if dist == "torch":
        return torch_version() or version
    return version


@cache
def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in LIBRARIES:
        versions[dist] = installed_version(dist)
    versions["libsndfile"] = soundfile.__libsndfile_version__
    return versions


def resolved_config_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML, without ``output.dir`` (wherever it is interpolated) and Hydra's own node."""
    cfg = OmegaConf.merge(cfg, {"output": {"dir": None}}) if "output" in cfg else cfg
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    data.get("output", {}).pop("dir", None)
    for stage in (data.get("stages") or {}).values():
        if isinstance(stage, dict) and isinstance(stage.get("output"), dict):
            stage["output"].pop("dir", None)
    return OmegaConf.to_yaml(OmegaConf.create(data), sort_keys=True)


def config_hash(cfg: DictConfig) -> str:
    return text_hash(resolved_config_yaml(cfg))


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_config(config_yaml: str, out_dir: Path) -> str:
    """Write ``config-<hash12>.yaml`` into ``out_dir`` unless it is there (same hash, same text); return the hash.

    Created as a new file only: two runs writing it at once, or a file of that name already there, are left alone.
    """
    digest = text_hash(config_yaml)
    path = out_dir / f"config-{digest[:12]}.yaml"
    if not path.exists():
        write_new_bytes(path, config_yaml.encode("utf-8"))
    return digest


def provenance(cfg_hash: str) -> dict[str, Any]:
    return {"config_sha256": cfg_hash, "versions": library_versions()}
