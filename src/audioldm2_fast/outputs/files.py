"""File names, and atomic, never-overwriting writes of audio and of any other file."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..runtime.errors import OutputError
from .journal import Journal

EXTENSIONS = {"wav": ".wav", "flac": ".flac", "ogg": ".ogg", "mp3": ".mp3"}
_MAX_SUFFIX = 10_000
#: ``link`` errors that mean "this file system has no hard links" (FAT, some network and FUSE file systems).
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}


def prompt_slug(prompt: str, max_length: int = 60) -> str:
    """A file-system-safe slug of the prompt, capped in length, with a short hash of the full prompt.

    The hash keeps prompts that share a long prefix (or slug to nothing, like emoji) apart.
    """
    digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")
    words = words[: max(1, max_length)].rstrip("-") or "prompt"
    return f"{words}-{digest}"


def reserve_path(directory: Path, stem: str, extension: str) -> Path:
    """Create and return a new, empty file ``stem[-k]extension``; an existing file is never reused."""
    for k in range(_MAX_SUFFIX):
        path = directory / _candidate(stem, extension, k)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise OutputError(f"output.dir: no free file name for {stem}{extension} in {directory}")


def publish(
    directory: Path, stem: str, extension: str, write: Callable[[str], Any], journal: Journal | None = None
) -> Path:
    """Write a new file ``stem[-k]extension`` in ``directory`` and return its path; no existing file is replaced.

    ``write(tmp)`` writes the whole content under a temporary name; the file then gets the first free name by a hard
    link, which fails when the name exists, so taking the name and checking it are one atomic step, and a file under
    a real name is always complete, whenever the process is killed. Without a journal the temporary file is hidden in
    ``directory``; with one it goes in the journal's ``temp_dir``, and each step is recorded before it is taken
    (``outputs.journal``), so that what a killed run left can be removed exactly. On a file system without hard links
    the name is reserved as an empty file and then replaced; a kill in between leaves that empty file.
    """
    if journal is None:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}{extension}.", suffix=".part", dir=directory)
        os.close(fd)
        temp = Path(tmp)
    else:
        temp = journal.temp_dir / f"{stem}{extension}.{secrets.token_hex(6)}.part"
        journal.record(temp=temp.name)
        os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    try:
        write(str(temp))
        _usual_permissions(str(temp))
        for k in range(_MAX_SUFFIX):
            path = directory / _candidate(stem, extension, k)
            if journal is not None:
                journal.record(link=temp.name, to=path.name)
            try:
                os.link(temp, path)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                path = reserve_path(directory, stem, extension)
                if journal is not None:
                    journal.record(own=path.name)
                os.replace(temp, path)
                return path
            if journal is not None:
                journal.record(own=path.name)
            temp.unlink()
            return path
        raise OutputError(f"output.dir: no free file name for {stem}{extension} in {directory}")
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: str, subtype: str | None) -> None:
    """Write ``audio`` to ``path`` (a new temporary file of :func:`publish`, or any path)."""
    channels = 1 if audio.ndim == 1 else audio.shape[1]
    with sf.SoundFile(
        str(path), "w", sample_rate, channels, subtype.upper() if subtype else None, format=fmt.upper()
    ) as fh:
        _no_peak_chunk(fh)
        fh.write(audio)


def publish_audio(
    directory: Path,
    stem: str,
    audio: np.ndarray,
    sample_rate: int,
    fmt: str,
    subtype: str | None,
    journal: Journal | None = None,
) -> Path:
    """A new audio file ``stem[-k].<ext>`` (:func:`publish`)."""
    return publish(
        directory, stem, EXTENSIONS[fmt], lambda tmp: write_audio(Path(tmp), audio, sample_rate, fmt, subtype), journal
    )


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name, then rename it over ``path`` (a reader never sees half a file)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    _write_then_rename(path, write)


def write_new_bytes(path: Path, data: bytes) -> bool:
    """Write ``data`` as the new file ``path``; False (and nothing written) when ``path`` already exists."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        Path(tmp).write_bytes(data)
        _usual_permissions(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS or path.exists():
                raise
            os.replace(tmp, path)
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_then_rename(path: Path, write: Callable[[str], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _usual_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _usual_permissions(tmp: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions


def _candidate(stem: str, extension: str, k: int) -> str:
    return f"{stem}{extension}" if k == 0 else f"{stem}-{k}{extension}"


def _no_peak_chunk(fh: Any) -> None:
    """Leave out the PEAK chunk that libsndfile adds to float files: it holds the write time, so two runs of the
    same settings would differ in their bytes."""
    sf._snd.sf_command(fh._file, 0x1050, sf._ffi.NULL, 0)  # SFC_SET_ADD_PEAK_CHUNK, SF_FALSE
