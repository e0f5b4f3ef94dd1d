"""``manifest.jsonl``: one JSON row per written file. One reader, one appender, one atomic rewriter, and the merge
of several manifests (shards, job dirs) into one.

A row is appended only after its file is in place, and a manifest is only ever appended to, except by resume (which
drops the rows of incomplete items) and merge, which replace it atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..runtime.errors import PROG
from .files import write_bytes

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"


def manifest_name(shard_index: int = 0, shard_count: int = 1) -> str:
    """``manifest.jsonl``; each shard of a sharded run appends to its own ``manifest.shard-<i>-of-<n>.jsonl``."""
    return MANIFEST if shard_count <= 1 else f"manifest.shard-{shard_index}-of-{shard_count}.jsonl"


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The rows of a manifest; a torn line (a process killed mid-append) or a foreign one is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "path" in row:
            rows.append(row)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON row and flush it to disk, so a crash never leaves a torn line behind."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a manifest atomically."""
    write_bytes(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))


def has_torn_line(path: Path) -> bool:
    data = path.read_bytes() if path.is_file() else b""
    return bool(data) and not data.endswith(b"\n")


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
    """Merge into ``root/manifest.jsonl``; returns the counts and the inputs.

    Inputs are ``root/manifest.jsonl`` itself (so merging again keeps what it has), ``root/manifest.shard-*.jsonl``
    and the manifests of its subdirs. Paths are rewritten relative to ``root``. A row is one (item id, candidate);
    the same one from two manifests is kept once and counted as a duplicate. No input is changed.
    """
    inputs = shard_manifests(root)
    merged: dict[tuple, dict[str, Any]] = {}
    duplicates = 0
    for manifest in [root / MANIFEST, *inputs]:
        for row in read_manifest(manifest):
            path = _relative(manifest.parent / row["path"], root)
            row = {**row, "path": path}
            key = (row["item_id"], row.get("candidate")) if row.get("item_id") else ("", path)
            if key in merged:
                duplicates += merged[key]["path"] != path
                continue
            merged[key] = row
    out = root / MANIFEST
    if inputs:
        write_manifest(out, list(merged.values()))
    if duplicates:
        log.warning("%s: %d duplicate row(s) (same item and candidate in two manifests) kept once", out, duplicates)
    items = {row.get("item_id") for row in merged.values() if row.get("item_id")}
    return {"path": str(out), "rows": len(merged), "items": len(items), "duplicates": duplicates, "inputs": inputs}


def merge_and_report(root: Path) -> dict[str, Any]:
    """``merge_manifests`` and one line on stdout saying what it did (``task=merge`` and sweeps over shards)."""
    report = merge_manifests(root)
    if not report["inputs"]:
        print(f"{PROG}: no shard manifests under {root}; nothing merged")
    else:
        print(
            f"{PROG}: merged {len(report['inputs'])} manifest(s) into {report['path']}: {report['rows']} row(s), "
            f"{report['items']} item(s), {report['duplicates']} duplicate(s)"
        )
    return report
