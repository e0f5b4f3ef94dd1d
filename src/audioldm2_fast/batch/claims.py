"""Claims: one writer per item of a batch run, across processes, shards and machines that share the output dir.

Before a run generates an item, it claims it: it creates ``<output.dir>/.audioldm2-fast/claims/<item id>.claim``
(written and locked under a temporary name, then hard-linked into place, which fails when the claim exists, so two
runs can never both create it) and holds an exclusive ``flock`` on it for as long as the run lives. The claim file is
also the run's journal for the item (``outputs.journal``): the writer records each file before making it. Once the
item's manifest rows are written, the run removes its claim.

The kernel releases a lock when its process ends, however it ends (``kill -9``, a crash, the OOM killer). So a claim
whose lock can be taken belongs to a run that is gone; whoever takes the lock is the one run that recovers the item
(:mod:`.resume` removes what the journal says the gone run made), and the claim becomes its own. A claim whose lock
cannot be taken belongs to a live run: the item is left to it. Locks must reach across machines for claims to do so
(NFS v4 and most cluster file systems: check yours, e.g. Lustre needs ``-o flock``).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..outputs.journal import Journal, read_entries
from ..runtime.errors import OutputError

#: The runs' own bookkeeping inside an output dir; safe to delete when no run is using the dir.
STATE_DIR = ".audioldm2-fast"
CLAIMS = f"{STATE_DIR}/claims"
TEMPORARIES = f"{STATE_DIR}/tmp"  # files being written, before they get their real names


@dataclass
class Claim:
    """A held claim on one item. ``previous`` holds the journal of a run that is gone (None for a new claim)."""

    item_id: str
    path: Path
    fd: int
    temp_dir: Path
    previous: list[dict[str, Any]] | None = None
    journal: Journal = field(init=False)

    def __post_init__(self) -> None:
        self.journal = Journal(self.fd, self.temp_dir)

    def entries(self) -> list[dict[str, Any]]:
        """What the claim file holds now: its header and the journal entries after it."""
        return read_entries(_read_all(self.fd))

    def take_over(self, header: dict[str, Any]) -> None:
        """Make a recovered claim this run's: its journal starts again with this run's header."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.journal.record(**header)
        self.previous = None

    def release(self) -> None:
        """The item is complete: remove the claim (still locked, so no one else acts on it meanwhile)."""
        try:
            os.unlink(self.path)
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the lock and leave the claim where it is, for a later run to recover."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Claims:
    """The claims directory of one output dir, as one run sees it."""

    def __init__(self, out_dir: Path, manifest: str):
        self.dir = out_dir / CLAIMS
        self.temp_dir = out_dir / TEMPORARIES
        try:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            self.dir.mkdir(exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".lock-probe.", dir=self.dir)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise OutputError(
                f"output.dir: cannot keep claims in {str(self.dir)!r} ({exc.strerror or exc}); batch runs need a "
                "writable dir on a file system with file locks"
            ) from None
        self.token = secrets.token_hex(6)
        self.header_fields = {
            "run": self.token,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "manifest": manifest,
        }
        self._remove_abandoned_temporaries()

    def header(self, item_id: str) -> dict[str, Any]:
        return {"claim": item_id, **self.header_fields}

    def acquire(self, item_id: str, wait: bool = False) -> Claim | None:
        """Claim ``item_id``: a new claim, or one recovered from a run that is gone (its ``previous`` entries set).

        None when a live run holds it; with ``wait=True``, block until that run releases it or ends.
        """
        path = self.dir / f"{item_id}.claim"
        while True:
            claim = self._create(item_id, path)
            if claim is not None:
                return claim
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # released in between: try to create it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            if not _is_current(fd, path):
                os.close(fd)  # released (removed) while this run waited for its lock
                continue
            return Claim(item_id, path, fd, self.temp_dir, previous=read_entries(_read_all(fd)))

    def _create(self, item_id: str, path: Path) -> Claim | None:
        temp = self.dir / f".{item_id}.{self.token}.new"
        temp.unlink(missing_ok=True)
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            Journal(fd, self.temp_dir).record(**self.header(item_id))
            os.link(temp, path)
        except (FileExistsError, FileNotFoundError):  # claimed already; or the temporary was cleared as abandoned
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        finally:
            temp.unlink(missing_ok=True)
        return Claim(item_id, path, fd, self.temp_dir)

    def _remove_abandoned_temporaries(self) -> None:
        """Temporary claims of runs killed while creating one (unlocked, so their run is gone)."""
        for temp in self.dir.glob(".*.new"):
            try:
                fd = os.open(temp, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _is_current(fd, temp):
                    temp.unlink(missing_ok=True)
            except OSError:
                pass
            finally:
                os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
