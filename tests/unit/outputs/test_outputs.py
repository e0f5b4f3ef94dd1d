"""Audio files, file names and manifest rows; nothing existing is ever overwritten."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from audioldm2_fast.outputs.files import prompt_slug

MANIFEST_FIELDS = {
    "path",
    "prompt",
    "negative_prompt",
    "seed",
    "candidate",
    "rank",
    "score",
    "steps",
    "scheduler",
    "guidance_scale",
    "audio_length_s",
    "sample_rate",
    "checkpoint",
    "stage_times_s",
}


def test_float_wav_equals_the_generated_waveform(make_generator, tmp_path):
    out = tmp_path / "o"
    result = make_generator("prompt=rain", "negative_prompt=noise", "output.subtype=FLOAT", out=out).generate()
    row = json.loads((out / "manifest.jsonl").read_text())
    assert set(row) >= MANIFEST_FIELDS
    assert row["prompt"] == "rain" and row["negative_prompt"] == "noise" and row["checkpoint"] == "tiny"
    assert row["steps"] == 4 and row["sample_rate"] == 16000 and row["audio_length_s"] == 1.0
    assert set(row["stage_times_s"]) >= {"text_encoders", "prior", "denoiser", "vae_decoder", "vocoder"}
    audio, sr = sf.read(out / row["path"], dtype="float32")
    assert sr == 16000 and audio.shape == (16000,)
    np.testing.assert_array_equal(audio, result.waveforms[0])


def test_manifest_records_per_call_request_values(make_generator, tmp_path):
    out = tmp_path / "req"
    make_generator("prompt=x", out=out).generate(steps=2, seed=9, guidance_scale=2.0)
    row = json.loads((out / "manifest.jsonl").read_text())
    assert (row["steps"], row["seed"], row["guidance_scale"]) == (2, 9, 2.0)


def test_formats(make_generator, tmp_path):
    for fmt, subtype in [("flac", "PCM_24"), ("ogg", None)]:
        out = tmp_path / fmt
        make_generator(
            "prompt=x", f"output.format={fmt}", *([f"output.subtype={subtype}"] if subtype else []), out=out
        ).generate()
        row = json.loads((out / "manifest.jsonl").read_text())
        assert row["path"].endswith("." + fmt)
        info = sf.info(out / row["path"])
        assert info.format == fmt.upper() and info.frames == 16000


def test_nothing_existing_is_overwritten(make_generator, tmp_path):
    out = tmp_path / "same"
    gen = make_generator("prompt=x", out=out)
    gen.generate()
    first = {p.name: p.read_bytes() for p in out.glob("*.wav")}
    gen.generate(seed=0)
    gen.generate(seed=0)
    files = sorted(p.name for p in out.glob("*.wav"))
    assert len(files) == 3 and len(set(files)) == 3
    for name, data in first.items():
        assert (out / name).read_bytes() == data
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == files


def test_slug_is_safe_and_capped():
    long_prompt = "The sound of Brazilian samba drums " * 200
    slug = prompt_slug(long_prompt, max_length=60)
    assert len(slug) <= 60 + 9 and slug.startswith("the-sound-of-brazilian-samba")
    assert prompt_slug("🎵🎵", 60).startswith("prompt-")
    assert prompt_slug("a/b\\c:..\x00", 60).replace("-", "").isalnum()
    assert prompt_slug("same prefix one", 4) != prompt_slug("same prefix two", 4)


def test_huge_prompt_writes_a_short_file_name(make_generator, tmp_path):
    out = tmp_path / "huge"
    make_generator("prompt='" + "drums and waves " * 300 + "'", out=out).generate()
    (wav,) = out.glob("*.wav")
    assert len(wav.name) < 100
