"""Resume: which items of a batch run are complete, and what to clear before an incomplete one is generated again.

An item is complete when the dir's manifests (``manifest.jsonl`` and ``manifest.shard-*.jsonl``) have a row for each of
its candidates and each of those rows' files exists; the writer adds an item's rows only once all its files are in
place. Nothing is removed on the evidence of a file name. Before an incomplete item is generated again by the run that
now holds its claim (``.claims``), its rows are dropped from every manifest, and the files a journal says a run made
for it are removed, unless a manifest row names them. Files of the item that no journal names (written by an older
version, or by hand) stay where they are, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..outputs.journal import started_files
from ..outputs.manifest import drop_rows, parse_rows
from .claims import TEMPORARIES, Claim
from .items import Item

log = logging.getLogger(__name__)

_MANIFEST_RE = re.compile(r"^manifest(\.shard-\d+-of-\d+)?\.jsonl$")


@dataclass
class _Tail:
    """One manifest, held open, how much of it has been read, and the rows read from it by item id.

    Holding the file open is what makes "was it replaced?" answerable: a rewrite gives the name a new file, and while
    the old one is open its inode number cannot be given to another file (ext4 reuses them at once).
    """

    fd: int
    offset: int = 0
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)


class ManifestView:
    """The rows of every manifest of an output dir, kept current by reading only what was appended since."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self._tails: dict[str, _Tail] = {}
        self.refresh()

    def refresh(self) -> None:
        names = {e.name for e in os.scandir(self.out_dir) if _MANIFEST_RE.match(e.name) and e.is_file()}
        for gone in set(self._tails) - names:
            os.close(self._tails.pop(gone).fd)
        for name in names:
            self._read_new(name)

    def close(self) -> None:
        for tail in self._tails.values():
            os.close(tail.fd)
        self._tails.clear()

    def _read_new(self, name: str) -> None:
        path = self.out_dir / name
        tail = self._tails.get(name)
        try:
            if tail is None or os.stat(path).st_ino != os.fstat(tail.fd).st_ino:  # new, or rewritten: read it whole
                fd = os.open(path, os.O_RDONLY)
                if tail is not None:
                    os.close(tail.fd)
                tail = self._tails[name] = _Tail(fd=fd)
        except FileNotFoundError:
            if tail is not None:
                os.close(self._tails.pop(name).fd)
            return
        data = b""
        while chunk := os.pread(tail.fd, 1 << 20, tail.offset + len(data)):
            data += chunk
        end = data.rfind(b"\n") + 1  # whole lines only: an append may be under way
        tail.offset += end
        for row in parse_rows(data[:end]):
            if row.get("item_id") is not None:
                tail.rows.setdefault(str(row["item_id"]), []).append(row)
            tail.paths += [p for p in (row.get("path"), row.get("spectrogram")) if isinstance(p, str)]

    def manifests(self) -> list[Path]:
        return [self.out_dir / name for name in sorted(self._tails)]

    def rows_of(self, item_id: str) -> list[dict[str, Any]]:
        return [row for name in sorted(self._tails) for row in self._tails[name].rows.get(item_id, [])]

    def referenced(self) -> set[str]:
        """Every file a row names (audio and spectrogram), relative to the output dir."""
        return {p for tail in self._tails.values() for p in tail.paths}

    def complete(self, item: Item) -> bool:
        by_candidate: dict[int, dict[str, Any]] = {}
        for row in self.rows_of(item.id):
            by_candidate.setdefault(int(row.get("candidate", 0)), row)
        return set(by_candidate) == set(range(item.num_waveforms)) and all(
            (self.out_dir / str(row["path"])).is_file() for row in by_candidate.values()
        )


def settle(claim: Claim, item: Item, view: ManifestView, header: dict[str, Any]) -> bool:
    """Prepare a held claim. True when the item is complete (nothing to generate; the caller releases the claim).

    Otherwise the item is cleared (its rows, and the files a gone run's journal names) and the claim's journal starts
    again as this run's.
    """
    view.refresh()
    complete = view.complete(item)
    entries = claim.previous or []
    if entries:
        clear(item, entries, view, rows=not complete, reason="a run that stopped before finishing it")
    elif not complete:
        clear(item, [], view, rows=True, reason="an earlier run")
    if not complete and claim.previous is not None:
        claim.take_over(header)
    return complete


def clear(item: Item, entries: list[dict[str, Any]], view: ManifestView, rows: bool, reason: str) -> None:
    """Remove what ``entries`` (a journal) say was made for ``item`` and no row names; with ``rows``, drop the item's
    rows from every manifest first. Files that rows named but no journal does are left in place."""
    out_dir = view.out_dir
    temp_dir = out_dir / TEMPORARIES
    finals, temps = started_files(entries, out_dir, temp_dir)  # before any temporary goes: links are told by them
    dropped: list[dict[str, Any]] = []
    if rows and view.rows_of(item.id):
        for manifest in view.manifests():
            dropped += drop_rows(manifest, lambda row: row.get("item_id") == item.id)
        if dropped:
            log.warning("item %s: dropped %d manifest row(s) left by %s", item.id, len(dropped), reason)
        view.refresh()
    referenced = view.referenced()
    for name in sorted(finals - referenced):
        if _remove(out_dir / name):
            log.warning("removing %s: made for item %s by %s", name, item.id, reason)
    for name in temps:
        _remove(temp_dir / name)
    kept = sorted(
        {p for row in dropped for p in (row.get("path"), row.get("spectrogram")) if isinstance(p, str)} - finals
    )
    kept = [p for p in kept if (out_dir / p).exists() and p not in referenced]
    if kept:
        log.warning("item %s: left in place (no journal says a run made them): %s", item.id, ", ".join(kept))


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
