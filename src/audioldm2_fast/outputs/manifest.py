"""``manifest.jsonl``: one JSON row per written file. One reader, one appender, one atomic rewriter, and the merge
of several manifests (shards, job dirs) into one.

A row is appended only after its file is in place, and a manifest is only ever appended to, except by batch
recovery (which drops the rows of an incomplete item) and merge, which replace it atomically. Several processes may
share a manifest (two batch workers on one output dir): every append and every rewrite holds an exclusive lock on the
manifest file (``flock``), so no row is lost or torn by another writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
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
        return parse_rows(path.read_bytes())
    except OSError:
        return []


def parse_rows(data: bytes) -> list[dict[str, Any]]:
    """The rows in a manifest's bytes (lines that are not whole JSON rows are skipped)."""
    rows = []
    for line in data.split(b"\n"):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "path" in row:
            rows.append(row)
    return rows


@contextlib.contextmanager
def locked(path: Path) -> Iterator[int]:
    """Hold an exclusive lock on the manifest at ``path`` (created if missing); yields a descriptor open for appends.

    A rewrite replaces the file, so a process that waited on the old file's lock opens the new one and locks again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # releases the lock


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows in one write under the manifest's lock, and flush them to disk.

    A line torn by a process killed mid-write is ended first, so the new rows stay whole.
    """
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    with locked(path) as fd:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON row (:func:`append_rows`)."""
    append_rows(path, [row])


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace a manifest atomically (take :func:`locked` first when other processes may append to it)."""
    write_bytes(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8"))


def drop_rows(path: Path, drop: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Rewrite the manifest at ``path`` without the rows ``drop`` selects, under its lock; returns those rows.

    The file is left as it is when nothing is dropped. A rewrite keeps only whole rows (a torn line goes).
    """
    if not path.is_file():
        return []
    with locked(path):
        rows = read_manifest(path)
        dropped = [row for row in rows if drop(row)]
        if dropped:
            write_manifest(path, [row for row in rows if not drop(row)])
    return dropped


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
    out = root / MANIFEST
    with locked(out) if inputs else contextlib.nullcontext():  # a batch run may be appending to it
        for manifest in [out, *inputs]:
            for row in read_manifest(manifest):
                path = _relative(manifest.parent / row["path"], root)
                row = {**row, "path": path}
                key = (row["item_id"], row.get("candidate")) if row.get("item_id") else ("", path)
                if key in merged:
                    duplicates += merged[key]["path"] != path
                    continue
                merged[key] = row
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
