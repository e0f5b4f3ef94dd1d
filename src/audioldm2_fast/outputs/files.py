"""File names, and atomic, never-overwriting writes of audio and of any other file."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from ..runtime.errors import OutputError

EXTENSIONS = {"wav": ".wav", "flac": ".flac", "ogg": ".ogg", "mp3": ".mp3"}


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
    for k in range(10_000):
        path = directory / (f"{stem}{extension}" if k == 0 else f"{stem}-{k}{extension}")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise OutputError(f"output.dir: no free file name for {stem}{extension} in {directory}")


def write_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: str, subtype: str | None) -> None:
    """Write to a temporary name in the same directory, then rename over the reserved ``path``."""

    def write(tmp: str) -> None:
        channels = 1 if audio.ndim == 1 else audio.shape[1]
        with sf.SoundFile(
            tmp, "w", sample_rate, channels, subtype.upper() if subtype else None, format=fmt.upper()
        ) as fh:
            _no_peak_chunk(fh)
            fh.write(audio)

    _write_then_rename(path, write)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` under a temporary name, then rename it over ``path`` (a reader never sees half a file)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    _write_then_rename(path, write)


def _write_then_rename(path: Path, write: Callable[[str], Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _no_peak_chunk(fh: Any) -> None:
    """Leave out the PEAK chunk that libsndfile adds to float files: it holds the write time, so two runs of the
    same settings would differ in their bytes."""
    sf._snd.sf_command(fh._file, 0x1050, sf._ffi.NULL, 0)  # SFC_SET_ADD_PEAK_CHUNK, SF_FALSE
