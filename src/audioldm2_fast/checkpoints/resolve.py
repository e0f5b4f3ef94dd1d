"""Turn the ``checkpoint`` config into a local diffusers-format directory, without loading any model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config.schema import SYNTHETIC_CONFIGS
from ..runtime.errors import CheckpointError, ConfigError
from .safety import check_checkpoint_files
from .tiny import tiny_checkpoint_dir

#: The published architectures' config files, packaged for the synthetic checkpoints.
CONFIG_ROOT = Path(__file__).resolve().parent / "configs"
SYNTHETIC_PREFIX = "synthetic-"

# Files a text-to-audio run needs; pickle weights (*.bin, *.pt, *.ckpt) are never fetched.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]


def read_model_index(path: Path, key: str = "checkpoint.path") -> dict[str, Any]:
    """Read and check ``model_index.json``; raise ConfigError naming ``key`` if ``path`` is not AudioLDM 2."""
    if not path.exists():
        raise ConfigError(key, f"{str(path)!r} does not exist")
    if not path.is_dir():
        raise ConfigError(key, f"{str(path)!r} is not a directory")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise ConfigError(key, f"{str(path)!r} is not a diffusers checkpoint (no model_index.json)")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(key, f"cannot read {str(index_file)!r}: {exc}") from None
    if not isinstance(index, dict) or index.get("_class_name") != "AudioLDM2Pipeline":
        found = index.get("_class_name") if isinstance(index, dict) else type(index).__name__
        raise ConfigError(key, f"{str(path)!r} is not an AudioLDM 2 checkpoint (model_index says {found!r})")
    return index


def synthetic_config_dir(config: str) -> Path:
    """The packaged config directory of one published checkpoint (``audioldm2``, ``audioldm2-large``, ...)."""
    if config not in SYNTHETIC_CONFIGS:
        raise ConfigError("checkpoint.synthetic.config", f"must be one of {list(SYNTHETIC_CONFIGS)} (got {config!r})")
    return CONFIG_ROOT / config


def resolve_checkpoint(ckpt: Any) -> Path:
    """Return the local directory of the configured checkpoint, building or locating it as needed."""
    name = ckpt.get("name")
    if str(name or "").startswith(SYNTHETIC_PREFIX):
        # Only the packaged config directory: the store builds the random-weight components in memory.
        synthetic = ckpt.get("synthetic") or {}
        path = synthetic_config_dir(str(synthetic.get("config") or str(name).removeprefix("synthetic-")))
        read_model_index(path, key=f"checkpoint={name}")
        return path
    if name == "tiny":
        tiny = ckpt.get("tiny") or {}
        path = tiny_checkpoint_dir(
            seed=int(tiny.get("seed", 0)),
            language_model_class=str(tiny.get("language_model_class", "GPT2Model")),
            cache_dir=ckpt.get("cache_dir"),
        )
        _check_files(path, read_model_index(path), ckpt)
        return path
    if ckpt.get("path"):
        path = Path(str(ckpt.path)).expanduser()
        _check_files(path, read_model_index(path), ckpt)
        return path
    repo_id = ckpt.get("repo_id")
    if not repo_id:
        raise ConfigError("checkpoint.path", "required for checkpoint=local (a diffusers-format AudioLDM 2 directory)")
    path = _hub_snapshot(str(repo_id), ckpt.get("revision"), name)
    _check_files(path, read_model_index(path, key=f"checkpoint={name}"), ckpt)
    return path


def _check_files(path: Path, index: dict[str, Any], ckpt: Any) -> None:
    check_checkpoint_files(path, index, allow_pickle=bool(ckpt.get("allow_pickle", False)))


def _hub_snapshot(repo_id: str, revision: str | None, name: str) -> Path:
    from huggingface_hub import snapshot_download  # the hub client only when a hub checkpoint is resolved

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here just means "not in the cache"
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    reason = "offline mode (HF_HUB_OFFLINE) is on"
    if not offline:
        try:
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_PATTERNS))
        except Exception as exc:  # noqa: BLE001 - reported as one line below
            reason = f"download failed: {type(exc).__name__}"
    raise CheckpointError(
        f"checkpoint={name}: {repo_id!r} is not in the Hugging Face cache and cannot be fetched ({reason}); "
        "use checkpoint=tiny for a test run, checkpoint=local checkpoint.path=DIR for a local copy, "
        "or point HF_HOME at the cache that holds it"
    )
