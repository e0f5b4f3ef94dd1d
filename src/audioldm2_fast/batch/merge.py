"""``task=merge dir=...``: the shard manifests under a dir become one ``manifest.jsonl`` there.

Inputs are ``dir/manifest.jsonl`` itself (so merging again keeps what it has), ``dir/manifest.shard-*.jsonl`` (shards
that shared one output dir) and the manifests of its subdirs (the job dirs of a multirun). Paths are rewritten
relative to ``dir``. A row is one (item id, candidate); the same one from two manifests is kept once and counted as a
duplicate. The merged manifest is written under a temporary name and renamed; no input is changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..runtime.errors import ConfigError
from .run import read_manifest, write_manifest

log = logging.getLogger(__name__)

PROG = "audioldm2-fast"


def validate_merge_config(cfg: DictConfig) -> None:
    value = cfg.get("dir")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("dir", "required with task=merge: the sweep dir or output dir holding the shard manifests")
    if not Path(value).expanduser().is_dir():
        raise ConfigError("dir", f"{value!r} is not a directory")


def shard_manifests(root: Path) -> list[Path]:
    """The manifests a merge reads (besides ``root/manifest.jsonl``), in a stable order (job dirs numerically)."""

    def order(path: Path) -> tuple:
        parts = path.relative_to(root).parts
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)

    found = [
        *root.glob("manifest.shard-*.jsonl"),
        *root.glob("*/manifest.jsonl"),
        *root.glob("*/manifest.shard-*.jsonl"),
    ]
    return sorted(found, key=order)


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies under it (it always does for our own rows), else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path.resolve())


def merge_manifests(root: Path) -> dict[str, Any]:
    """Merge into ``root/manifest.jsonl``; returns the counts and the inputs."""
    inputs = shard_manifests(root)
    merged: dict[tuple, dict[str, Any]] = {}
    duplicates = 0
    for manifest in [root / "manifest.jsonl", *inputs]:
        for row in read_manifest(manifest):
            path = _relative(manifest.parent / row["path"], root)
            row = {**row, "path": path}
            key = (row["item_id"], row.get("candidate")) if row.get("item_id") else ("", path)
            if key in merged:
                duplicates += merged[key]["path"] != path
                continue
            merged[key] = row
    out = root / "manifest.jsonl"
    if inputs:
        write_manifest(out, list(merged.values()))
    if duplicates:
        log.warning("%s: %d duplicate row(s) (same item and candidate in two manifests) kept once", out, duplicates)
    items = {row.get("item_id") for row in merged.values() if row.get("item_id")}
    return {"path": str(out), "rows": len(merged), "items": len(items), "duplicates": duplicates, "inputs": inputs}


def run_merge(cfg: DictConfig) -> dict[str, Any]:
    root = Path(str(cfg.dir)).expanduser()
    report = merge_manifests(root)
    if not report["inputs"]:
        print(f"{PROG}: no shard manifests under {root}; nothing merged")
    else:
        print(
            f"{PROG}: merged {len(report['inputs'])} manifest(s) into {report['path']}: {report['rows']} row(s), "
            f"{report['items']} item(s), {report['duplicates']} duplicate(s)"
        )
    return {"task": "merge", "outputs": [report["path"]] if report["inputs"] else []}
