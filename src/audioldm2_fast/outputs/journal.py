"""Journals: what a run started writing, recorded before each step, so that after a crash exactly those files can be
removed and nothing else.

A journal is a file of JSON lines. :func:`outputs.files.publish` writes three kinds of entry for each file it makes:

- ``{"temp": T}`` before it creates the temporary file ``T`` in the journal's own ``temp_dir``, where no one else
  puts files (so ``T`` is ours whenever it exists);
- ``{"link": T, "to": N}`` before it tries to give that file the real name ``N`` in the output dir (``N`` may be
  someone else's: it is ours only if it is the same file as ``T``, which a crash between the link and the next entry
  leaves behind);
- ``{"own": N}`` once ``N`` is that file.

:func:`started_files` reads those entries back into the names that are certainly ours. A name in a journal is a
plain file name; anything else (a path, ``..``) is ignored, so a damaged or hand-edited journal cannot point outside
the two directories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    """Appends entries to an open file descriptor (a claim file, see ``batch.claims``).

    Each entry is one ``write`` of one line, done before the step it describes. A killed process has handed every
    completed write to the kernel, so the journal is never behind the files (a machine that loses power may lose the
    last lines; a file the journal does not name is then left in place, never removed by mistake).
    """

    def __init__(self, fd: int, temp_dir: Path):
        self.fd = fd
        self.temp_dir = temp_dir

    def record(self, **entry: str) -> None:
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        while data:
            data = data[os.write(self.fd, data) :]


def read_entries(data: bytes) -> list[dict[str, Any]]:
    """The entries of a journal's bytes; a torn last line (a process killed while writing it) is skipped."""
    entries = []
    for line in data.decode("utf-8", errors="replace").split("\n"):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _plain_name(value: Any) -> str | None:
    if isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value:
        return value
    return None


def started_files(entries: list[dict[str, Any]], directory: Path, temp_dir: Path) -> tuple[set[str], set[str]]:
    """(the files in ``directory`` that the journal's run made, its temporary files in ``temp_dir``), by name."""
    temps = {name for e in entries if (name := _plain_name(e.get("temp")))}
    finals = {name for e in entries if (name := _plain_name(e.get("own")))}
    for entry in entries:
        temp, final = _plain_name(entry.get("link")), _plain_name(entry.get("to"))
        if temp in temps and final and final not in finals:
            try:
                if os.path.samefile(temp_dir / temp, directory / final):
                    finals.add(final)  # linked, then killed before the "own" entry
            except OSError:
                continue
    return finals, temps
