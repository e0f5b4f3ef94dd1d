"""Failures inside a run: non-finite values dropped per item, silence flagged, failing sweep jobs summarised."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import HELPERS, child_env

from audioldm2_fast.stages.finite import is_silent


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_nan_in_one_prompts_latents_drops_only_that_item(make_generator, tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(HELPERS))
    out = tmp_path / "nan"
    gen = make_generator("prompt=[rain,wind]", "stages.denoiser.impl=custom_stages:NaNDenoiser", out=out)
    result = gen.generate()
    assert len(result.failed) == 1
    line = result.failed[0]
    assert "prompt 1 ('wind') candidate 0" in line and "stage denoiser" in line
    assert "stages.denoiser.dtype=fp32" in line and "\n" not in line
    assert "stage denoiser" in caplog.text
    rows = _rows(out)
    assert [r["prompt"] for r in rows] == ["rain"]
    assert len(list(out.glob("*.wav"))) == 1
    assert np.isfinite(result.waveforms).all()  # the bad rows were zeroed, not passed on


def test_inf_on_the_text_side_fails_every_candidate_of_that_prompt(make_generator, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))
    out = tmp_path / "inf"
    gen = make_generator(
        "prompt=[rain,wind]", "num_waveforms=2", "stages.text_encoders.impl=custom_stages:NaNTextEncoders", out=out
    )
    result = gen.generate()
    assert len(result.failed) == 2 and all("prompt 0 ('rain')" in f for f in result.failed)
    assert all("stages.text_encoders.dtype=fp32" in f for f in result.failed)
    rows = _rows(out)
    assert {r["prompt"] for r in rows} == {"wind"} and sorted(r["rank"] for r in rows) == [1, 2]


def test_writer_refuses_non_finite_waveforms_per_item(make_generator, tmp_path):
    """The writer's own check, for a chain driven without the Generator's per-stage checks."""
    import torch

    gen = make_generator("prompt=[a,b]", out=tmp_path / "w")
    state = gen.new_state()
    for stage in gen.stages[:-1]:
        state = stage(state)
    state.waveforms[0, 5] = float("nan")
    state = gen.stages[-1](state)
    assert list(state.failed) == [0] and "stage writer" in state.failed[0]
    assert [r["prompt"] for r in state.records] == ["b"]
    assert torch.isnan(state.waveforms[0]).any()


def test_silence_is_flagged_in_the_manifest(make_generator, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HELPERS))
    out = tmp_path / "quiet"
    make_generator("prompt=[a,b]", "stages.vocoder.impl=custom_stages:SilentSecondVocoder", out=out).generate()
    silent = {r["prompt"]: r["silent"] for r in _rows(out)}
    assert silent == {"a": False, "b": True}
    assert is_silent(np.full(100, 0.0009, np.float32)) and not is_silent(np.full(100, 0.0011, np.float32))


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = child_env()
    cmd = [sys.executable, "-m", "audioldm2_fast", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_exits_5_after_writing_the_good_items(tmp_path):
    out = tmp_path / "o"
    (out).mkdir()
    (out / "keep.wav").write_bytes(b"existing")
    proc = _cli(
        ["checkpoint=tiny", "prompt=[rain,wind]", "steps=2", "audio_length_s=0.5", f"output.dir={out}",
         "stages.denoiser.impl=custom_stages:NaNDenoiser"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("audioldm2-fast: error: 1 of 2 item(s) failed") and "stages.denoiser.dtype=fp32" in last
    assert "Traceback" not in proc.stderr
    assert (out / "keep.wav").read_bytes() == b"existing"
    assert [r["prompt"] for r in _rows(out)] == ["rain"]


@pytest.mark.slow
def test_a_failing_generate_job_does_not_stop_the_sweep(tmp_path):
    proc = _cli(
        ["-m", "checkpoint=tiny", "prompt=x", "steps=2", "audio_length_s=0.5",
         "stages.denoiser.impl=denoiser,custom_stages:NaNDenoiser,denoiser"],
        tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert "ItemsFailedError" in rows[1]["error"] and "stage denoiser" in rows[1]["error"]
    assert "stage denoiser" in (sweep / "summary.md").read_text()
    assert len(list(sweep.glob("[02]/*.wav"))) == 2
