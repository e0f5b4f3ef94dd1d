"""Is an output directory writable? Checked before any model loads, without creating anything that stays."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import ConfigError


def check_writable_dir(path: Path, key: str) -> None:
    """Raise ConfigError naming ``key`` unless files can be created in ``path`` (or it can be created).

    An existing directory is probed by creating and removing a hidden temporary file, which also catches read-only
    mounts and the cases where permission bits do not apply (root). A directory still to be created needs its
    nearest existing ancestor to be a writable directory, and nothing on the way may be a dangling symbolic link or a
    loop of them (creating through one fails with a misleading "File exists").
    """
    shown = str(path)
    if "\0" in shown:
        raise ConfigError(key, f"{shown!r} is not a usable path (it contains a NUL character)")
    if _exists(path, shown, key):
        if not path.is_dir():
            raise ConfigError(key, f"{shown!r} exists and is not a directory")
        try:
            fd, probe = tempfile.mkstemp(prefix=".audioldm2-fast-write-test.", dir=path)
        except OSError as exc:
            raise ConfigError(key, f"{shown!r} is not writable: {exc.strerror or exc}") from None
        os.close(fd)
        os.unlink(probe)
        return
    ancestor = path.parent
    while not _exists(ancestor, shown, key) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(key, f"cannot create {shown!r}: {str(ancestor)!r} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(key, f"cannot create {shown!r}: {str(ancestor)!r} is not writable")


def _exists(path: Path, shown: str, key: str) -> bool:
    """Whether ``path`` exists; a symbolic link that leads nowhere, or a path that cannot be looked up, is refused."""
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ConfigError(
                key, f"cannot create {shown!r}: {str(path)!r} is a symbolic link to a missing target"
            ) from None
        return False
    except NotADirectoryError:
        raise ConfigError(key, f"cannot create {shown!r}: a part of it is a file, not a directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(key, f"cannot use {shown!r}: {str(path)!r} is a loop of symbolic links") from None
        raise ConfigError(key, f"cannot use {shown!r}: {exc.strerror or exc}") from None
    return True
