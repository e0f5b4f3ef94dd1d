"""Is an output directory writable? Checked before any model loads, without creating anything that stays."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError


def check_writable_dir(path: Path, key: str) -> None:
    """Raise ConfigError naming ``key`` unless files can be created in ``path`` (or it can be created).

    An existing directory is probed by creating and removing a hidden temporary file, which also catches read-only
    mounts and the cases where permission bits do not apply (root). A directory still to be created needs its
    nearest existing ancestor to be a writable directory.
    """
    if path.exists():
        if not path.is_dir():
            raise ConfigError(key, f"{str(path)!r} exists and is not a directory")
        try:
            fd, probe = tempfile.mkstemp(prefix=".audioldm2-fast-write-test.", dir=path)
        except OSError as exc:
            raise ConfigError(key, f"{str(path)!r} is not writable: {exc.strerror or exc}") from None
        os.close(fd)
        os.unlink(probe)
        return
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(key, f"cannot create {str(path)!r}: {str(ancestor)!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot create {str(path)!r}: {str(ancestor)!r} is not writable")
