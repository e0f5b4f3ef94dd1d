"""A PNG per output file: the waveform envelope over a log-mel spectrogram, titled with prompt, seed and settings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .files import publish
from .journal import Journal


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular HTK-scale mel filters, shape (n_mels, n_fft // 2 + 1)."""
    fmax = fmax or sample_rate / 2

    def to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    hz = 700.0 * (10.0 ** (np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2) / 2595.0) - 1.0)
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins) / np.maximum(upper - centre, 1e-9)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def log_mel(audio: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 160, n_mels: int = 64) -> np.ndarray:
    """Log-mel power spectrogram in dB (n_mels, frames), 80 dB below its maximum at most."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    frames = 1 + (len(audio) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(audio[idx] * np.hanning(n_fft)[None, :], axis=1)) ** 2
    mel = mel_filterbank(sample_rate, n_fft, n_mels) @ spec.T
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    return np.maximum(db, db.max() - 80.0)


def render_spectrogram(audio: np.ndarray, sample_rate: int, title: str) -> bytes:
    """PNG bytes: the waveform's min/max envelope above its log-mel spectrogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    duration = len(audio) / sample_rate
    fig, (ax_wave, ax_mel) = plt.subplots(
        2, 1, figsize=(8, 4.2), sharex=True, gridspec_kw={"height_ratios": [1, 3]}, constrained_layout=True
    )
    blocks = max(1, min(len(audio), 2000))
    chunks = np.array_split(np.asarray(audio, dtype=np.float32), blocks)
    t = np.linspace(0.0, duration, blocks)
    ax_wave.fill_between(t, [c.min() for c in chunks], [c.max() for c in chunks], color="tab:blue", linewidth=0)
    ax_wave.set_ylabel("amplitude", fontsize=8)
    ax_wave.set_ylim(-1.0, 1.0)
    image = ax_mel.imshow(
        log_mel(audio, sample_rate), origin="lower", aspect="auto", extent=(0.0, duration, 0, 64), cmap="magma"
    )
    ax_mel.set_ylabel("mel bin", fontsize=8)
    ax_mel.set_xlabel("time (s)", fontsize=8)
    fig.colorbar(image, ax=ax_mel, label="dB", pad=0.01)
    fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def spectrogram_title(row: dict) -> str:
    """Prompt, seed and the settings of one manifest row, on at most three lines."""
    prompt = row["prompt"] if len(row["prompt"]) <= 110 else row["prompt"][:107] + "..."
    rank = f"  rank {row['rank']}" + (f" (score {row['score']:.3f})" if row.get("score") is not None else "")
    settings = (
        f"{row['checkpoint']}  {row['scheduler']} x{row['steps']}  guidance {row['guidance_scale']:g}"
        f"  {row['audio_length_s']:g} s @ {row['sample_rate']} Hz"
    )
    return f"{prompt}\nseed {row['seed']}  candidate {row['candidate']}{rank}\n{settings}"


def write_spectrogram(
    out_dir: Path, audio_path: Path, audio: np.ndarray, sample_rate: int, row: dict, journal: Journal | None = None
) -> str:
    """Render the PNG next to ``audio_path`` (same stem, never overwriting); return its path relative to out_dir."""
    data = render_spectrogram(audio, sample_rate, spectrogram_title(row))
    png = publish(out_dir, audio_path.stem, ".png", lambda tmp: Path(tmp).write_bytes(data), journal)
    return str(png.relative_to(out_dir))
