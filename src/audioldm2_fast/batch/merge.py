"""``task=merge dir=...``: the shard manifests under a dir become one ``manifest.jsonl`` there
(``outputs.manifest.merge_manifests`` says which manifests are read and how rows are kept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..outputs.manifest import merge_and_report


def run_merge(cfg: DictConfig) -> dict[str, Any]:
    report = merge_and_report(Path(str(cfg.dir)).expanduser())
    return {"task": "merge", "outputs": [report["path"]] if report["inputs"] else []}
