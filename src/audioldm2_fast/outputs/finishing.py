"""Audio finishing before a file is written: peak or loudness normalisation under a headroom.

What was applied (gain, measured loudness and peak) is returned so that the manifest can record it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _db(x: float) -> float | None:
    return round(20.0 * math.log10(x), 3) if x > 0 else None


def peak_dbfs(audio: np.ndarray) -> float | None:
    """The sample peak in dBFS (None for silence)."""
    return _db(float(np.max(np.abs(audio)))) if audio.size else None


def measure_loudness(audio: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770, LUFS); None when the audio is too short or silent to gate."""
    import pyloudnorm  # only for output.normalize=loudness

    meter = pyloudnorm.Meter(sample_rate, block_size=min(0.4, len(audio) / sample_rate))
    value = float(meter.integrated_loudness(audio.astype(np.float64)))
    return round(value, 3) if math.isfinite(value) else None


def finish_audio(
    audio: np.ndarray,
    sample_rate: int,
    normalize: str = "none",
    headroom_db: float = 1.0,
    loudness_lufs: float = -14.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply ``normalize`` (none | peak | loudness, as ``output.normalize``) with ``headroom_db``; return
    (audio, record).

    ``peak`` scales the sample peak to ``-headroom_db`` dBFS. ``loudness`` scales to ``loudness_lufs`` and then
    lowers the gain further if the peak would exceed ``-headroom_db`` dBFS (``limited`` in the record).
    """
    mode = normalize or "none"
    headroom = float(headroom_db)
    ceiling = 10.0 ** (-headroom / 20.0)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    record: dict[str, Any] = {"normalize": mode, "peak_dbfs_before": _db(peak)}
    gain = 1.0
    if mode == "peak":
        record["headroom_db"] = headroom
        gain = ceiling / peak if peak > 0 else 1.0
    elif mode == "loudness":
        target = float(loudness_lufs)
        before = measure_loudness(audio, sample_rate)
        record.update(headroom_db=headroom, loudness_target_lufs=target, loudness_lufs_before=before)
        if before is not None:
            gain = 10.0 ** ((target - before) / 20.0)
        record["limited"] = bool(peak * gain > ceiling)
        if record["limited"]:
            gain = ceiling / peak
    if mode != "none":
        audio = (audio * gain).astype(np.float32)
        record["gain_db"] = round(20.0 * math.log10(gain), 3)
        record["peak_dbfs"] = peak_dbfs(audio)
        if mode == "loudness":
            record["loudness_lufs"] = measure_loudness(audio, sample_rate)
    return audio, record


def trim_record(trim: bool, requested_samples: int | None) -> dict[str, Any]:
    """What ``output.trim`` did: true cuts the vocoder output to exactly the requested number of samples."""
    return {"trim": bool(trim), "requested_samples": requested_samples}
