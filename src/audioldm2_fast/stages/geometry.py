"""Audio length <-> mel frames <-> latent shape, with the stock pipeline's exact arithmetic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..runtime.errors import ConfigError


@dataclass(frozen=True)
class AudioGeometry:
    audio_length_s: float  # requested length
    mel_frames: int  # rounded up to a multiple of the VAE scale factor (and to the length bucket, if any)
    mel_bins: int
    waveform_length: int  # samples kept after the vocoder
    sample_rate: int
    vae_scale_factor: int

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.mel_frames // self.vae_scale_factor, self.mel_bins // self.vae_scale_factor


def audio_geometry(
    audio_length_s: float | None,
    vocoder_config: dict[str, Any],
    vae_config: dict[str, Any],
    unet_config: dict[str, Any],
    length_bucket_s: float | None = None,
) -> AudioGeometry:
    """Mirror ``AudioLDM2Pipeline.__call__``: same float expressions, so the same frame and sample counts.

    With ``length_bucket_s``, the mel frame count is further rounded up to a whole number of buckets (each a
    multiple of the VAE scale factor), so every length inside one bucket has the same latent shape and a compiled
    UNet sees no new shape; the vocoder output is then trimmed to the requested ``waveform_length``.
    """
    vae_scale_factor = 2 ** (len(vae_config["block_out_channels"]) - 1)
    sample_rate = int(vocoder_config["sampling_rate"])
    hop_s = np.prod(vocoder_config["upsample_rates"]) / vocoder_config["sampling_rate"]
    if audio_length_s is None:
        audio_length_s = unet_config["sample_size"] * vae_scale_factor * hop_s
    if not math.isfinite(float(audio_length_s) / float(hop_s) * sample_rate):
        raise ConfigError("audio_length_s", f"{audio_length_s:g} s is too long to count its samples")
    height = int(audio_length_s / hop_s)
    waveform_length = int(audio_length_s * sample_rate)
    if height % vae_scale_factor != 0:
        height = int(np.ceil(height / vae_scale_factor)) * vae_scale_factor
    if length_bucket_s is not None:
        height = bucket_frames(height, length_bucket_s, hop_s, vae_scale_factor)
    minimum = hop_s * vae_scale_factor
    if audio_length_s < minimum:
        raise ConfigError("audio_length_s", f"must be at least {float(minimum):g} s for this checkpoint")
    return AudioGeometry(
        audio_length_s=float(audio_length_s),
        mel_frames=height,
        mel_bins=int(vocoder_config["model_in_dim"]),
        waveform_length=waveform_length,
        sample_rate=sample_rate,
        vae_scale_factor=vae_scale_factor,
    )


def bucket_frames(frames: int, length_bucket_s: float, hop_s: float, vae_scale_factor: int) -> int:
    """``frames`` rounded up to a whole number of buckets; a bucket is ``length_bucket_s`` in mel frames, rounded to
    the nearest positive multiple of the VAE scale factor. Integer arithmetic, so 10.24 s in 2.56 s buckets is exact."""
    bucket = max(1, round(length_bucket_s / hop_s / vae_scale_factor)) * vae_scale_factor
    return -(-frames // bucket) * bucket
