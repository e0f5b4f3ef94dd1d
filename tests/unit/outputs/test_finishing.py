"""Audio finishing: peak and loudness normalisation with a headroom, trimming, formats; all recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from audioldm2_fast.outputs.finishing import finish_audio, measure_loudness
from audioldm2_fast.runtime.errors import ConfigError


def _rows(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_peak_normalisation_lands_at_the_headroom(make_generator, tmp_path):
    out = tmp_path / "peak"
    make_generator(
        "prompt=x", "output.normalize=peak", "output.headroom_db=3", "output.subtype=FLOAT", out=out
    ).generate()
    (row,) = _rows(out)
    audio, _ = sf.read(out / row["path"], dtype="float32")
    assert np.abs(audio).max() == pytest.approx(10 ** (-3 / 20), rel=1e-5)
    fin = row["finishing"]
    assert fin["normalize"] == "peak" and fin["peak_dbfs"] == pytest.approx(-3.0, abs=1e-3)
    assert fin["gain_db"] == pytest.approx(-3.0 - fin["peak_dbfs_before"], abs=1e-2)


def test_loudness_normalisation_reaches_the_target_and_records_it(make_generator, tmp_path):
    out = tmp_path / "lufs"
    gen = make_generator(
        "prompt=x", "output.normalize=loudness", "output.loudness_lufs=-30", "output.subtype=FLOAT", out=out
    )
    result = gen.generate()
    (row,) = _rows(out)
    audio, sr = sf.read(out / row["path"], dtype="float32")
    assert measure_loudness(audio, sr) == pytest.approx(-30.0, abs=0.05)
    fin = row["finishing"]
    assert fin["loudness_lufs_before"] == pytest.approx(measure_loudness(result.waveforms[0], sr), abs=1e-3)
    assert fin["loudness_lufs"] == pytest.approx(-30.0, abs=0.05) and fin["limited"] is False


def test_loudness_gain_is_limited_by_the_headroom():
    rng = np.random.default_rng(0)
    audio = np.zeros(16000, dtype=np.float32)
    audio[::400] = 0.5  # sparse clicks: quiet on average, high peaks
    audio += 0.001 * rng.standard_normal(16000).astype(np.float32)
    out, fin = finish_audio(audio, 16000, **{"normalize": "loudness", "loudness_lufs": -10.0, "headroom_db": 1.0})
    assert fin["limited"] is True and np.abs(out).max() == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    assert fin["loudness_lufs"] < -10.0


def test_trim_false_keeps_the_latent_grid_tail(make_generator, tmp_path):
    # 0.5 s is 50 mel frames, rounded up to 52 (a multiple of 4): the vocoder makes more than 8000 samples.
    for trim in ("true", "false"):
        out = tmp_path / trim
        make_generator("prompt=x", "audio_length_s=0.5", "steps=2", f"output.trim={trim}", out=out).generate()
        (row,) = _rows(out)
        frames = sf.info(out / row["path"]).frames
        assert frames == row["num_samples"] and (frames == 8000 if trim == "true" else frames >= 8320)
        assert row["finishing"]["trim"] is (trim == "true") and row["finishing"]["requested_samples"] == 8000


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MPEG support")
def test_mp3(make_generator, tmp_path):
    out = tmp_path / "mp3"
    make_generator("prompt=x", "output.format=mp3", "steps=2", out=out).generate()
    (row,) = _rows(out)
    assert row["path"].endswith(".mp3") and sf.info(out / row["path"]).format == "MP3"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("output.normalize=rms", "output.normalize"),
        ("output.headroom_db=-1", "output.headroom_db"),
        ("output.loudness_lufs=5", "output.loudness_lufs"),
        ("output.trim=maybe", "output.trim"),
        ("output.spectrogram=1", "output.spectrogram"),
    ],
)
def test_bad_finishing_values_name_their_key(override, key):
    from audioldm2_fast.config.compose import compose_config
    from audioldm2_fast.config.validate import validate_config

    with pytest.raises(ConfigError) as info:
        validate_config(compose_config(["checkpoint=tiny", "prompt=x", override]))
    assert info.value.key == key


def test_mp3_refused_in_one_line_where_libsndfile_lacks_it(monkeypatch):
    from audioldm2_fast.config.compose import compose_config
    from audioldm2_fast.config.validate import validate_config

    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "", "FLAC": "", "OGG": ""})
    with pytest.raises(ConfigError, match="mp3 is not supported") as info:
        validate_config(compose_config(["checkpoint=tiny", "prompt=x", "output.format=mp3"]))
    assert info.value.key == "output.format" and "\n" not in str(info.value)
