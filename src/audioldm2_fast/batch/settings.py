"""``batch_settings.json``: the settings a batch run's audio depends on, recorded by its first run in the output dir.

A later run into the same dir, alongside or after it, must use the same ones (``batch_size`` and ``shard`` may
change); otherwise it is refused in one line naming ``output.dir``, before anything loads. The record is created as a
new file only, so two runs that start together cannot both write it, and a file of that name that is not such a
record is never replaced. Nothing here imports torch: the command line checks it before the model libraries load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config.fields import check_node
from ..config.schema import CheckpointConfig, SchedulerConfig
from ..outputs.files import write_new_bytes
from ..runtime.errors import ConfigError

SETTINGS_FILE = "batch_settings.json"


def batch_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings an item's audio depends on besides its own fields; a resumed run must use the same."""
    ckpt = cfg.checkpoint
    scheduler_config = cfg.scheduler.get("config")
    keys = ("seed", "negative_prompt", "num_waveforms", "audio_length_s", "guidance_scale", "eta", "max_new_tokens")
    return {
        "checkpoint": check_node(ckpt, CheckpointConfig, "checkpoint").label,
        "scheduler": cfg.scheduler.name,
        "scheduler.config": OmegaConf.to_container(scheduler_config, resolve=True) if scheduler_config else {},
        "steps": check_node(cfg.scheduler, SchedulerConfig, "scheduler").steps(cfg.get("steps")),
        **{key: cfg.get(key) for key in keys},
        "precision": cfg.precision.name,
        "output.format": cfg.output.format,
        "output.subtype": cfg.output.get("subtype"),
    }


def check_settings(out_dir: Path, cfg: DictConfig) -> None:
    """Record the settings in ``batch_settings.json``, or refuse a run made with other ones."""
    path = out_dir / SETTINGS_FILE
    settings = json.loads(json.dumps(batch_settings(cfg)))
    if write_new_bytes(path, (json.dumps(settings, indent=2) + "\n").encode()):
        return
    check_recorded_settings(out_dir, cfg)


def check_recorded_settings(out_dir: Path, cfg: DictConfig) -> None:
    """Refuse a run whose settings differ from those recorded in ``out_dir`` (nothing to check without a record)."""
    path = out_dir / SETTINGS_FILE
    if not path.exists():
        return
    settings = json.loads(json.dumps(batch_settings(cfg)))
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        recorded = None
    if not isinstance(recorded, dict) or "checkpoint" not in recorded:
        raise ConfigError(
            "output.dir", f"{str(path)!r} is not the settings record of a batch run; use another output.dir"
        )
    if recorded != settings:
        changed = [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in settings.items() if recorded.get(k) != v]
        raise ConfigError(
            "output.dir",
            f"{str(out_dir)!r} holds a batch run made with other settings ({'; '.join(changed)}); "
            "resume it with its own settings, or use a new output.dir",
        )
