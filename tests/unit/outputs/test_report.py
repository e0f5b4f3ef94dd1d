"""report.html per run and per sweep, opened from disk in headless Chromium; spectrogram PNGs."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf
from browser import dump_dom, needs_chromium, screenshot
from support import run_cli as _run

from audioldm2_fast.outputs.spectrogram import log_mel

PNG = b"\x89PNG\r\n\x1a\n"


def _durations(dom: str) -> dict[str, float]:
    """src -> the duration the browser loaded for it."""
    found = {}
    for tag in re.findall(r"<audio[^>]*>", dom):
        src = re.search(r'src="([^"]+)"', tag).group(1)
        duration = re.search(r'data-duration="([^"]+)"', tag)
        assert duration is not None, f"the browser did not load {src}: {tag}"
        found[src] = float(duration.group(1))
    return found


def test_every_file_gets_a_spectrogram_titled_with_its_settings(make_generator, tmp_path):
    out = tmp_path / "o"
    make_generator("prompt=rain on a tin roof", "seed=7", "num_waveforms=2", "steps=2", out=out).generate()
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        png = out / row["spectrogram"]
        assert png.read_bytes()[:8] == PNG and png.stem == (out / row["path"]).stem
    make_generator("prompt=x", "output.spectrogram=false", "output.report=false", out=tmp_path / "bare").generate()
    # audio, manifest and the resolved config it names (provenance); no PNG, no report
    assert sorted(p.suffix for p in (tmp_path / "bare").iterdir()) == [".jsonl", ".wav", ".yaml"]


def test_spectrogram_title_and_mel_content():
    from audioldm2_fast.outputs.spectrogram import spectrogram_title

    row = {"prompt": "rain", "seed": 7, "candidate": 1, "rank": 1, "score": 0.25, "checkpoint": "tiny", "steps": 2,
           "scheduler": "ddim", "guidance_scale": 3.5, "audio_length_s": 1.0, "sample_rate": 16000}  # fmt: skip
    title = spectrogram_title(row)
    assert "rain" in title and "seed 7" in title and "ddim x2" in title and "score 0.250" in title
    # A 1 kHz tone lights up one band; a 4 kHz tone a higher one.
    t = np.arange(16000) / 16000
    low = log_mel(np.sin(2 * np.pi * 1000 * t), 16000).mean(axis=1).argmax()
    high = log_mel(np.sin(2 * np.pi * 4000 * t), 16000).mean(axis=1).argmax()
    assert 0 < low < high < 63


@needs_chromium
def test_run_report_plays_every_file_in_a_browser(make_generator, tmp_path):
    out = tmp_path / "run"
    gen = make_generator("prompt=['rain on a tin roof','a dog barking']", "num_waveforms=2", "steps=2", out=out)
    gen.generate()
    gen.generate(prompt="wind", seed=3)  # a second call into the same dir: the report lists both
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    durations = _durations(dump_dom(out / "report.html"))
    assert set(durations) == {r["path"] for r in rows} and len(rows) == 6
    for src, duration in durations.items():
        assert duration == pytest.approx(sf.info(out / src).duration, abs=1e-3)
    shot = screenshot(out / "report.html", "report-run.png")
    assert shot.read_bytes()[:8] == PNG


@pytest.mark.slow
@needs_chromium
def test_sweep_report_links_each_jobs_outputs_and_survives_a_move(tmp_path):
    proc = _run(
        ["-m", "checkpoint=tiny", "prompt=x", "scheduler=ddim,pndm", "steps=2", "audio_length_s=0.5",
         "output.format=flac"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0  # pndm needs 4 steps: that job fails, and its row says so
    assert "denoising" not in proc.stderr and "stage/s" not in proc.stderr  # not a TTY: no bars
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    moved = tmp_path / "moved-sweep"
    shutil.move(sweep, moved)
    html = (moved / "report.html").read_text()
    assert "needs at least 4 steps" in html and "FAILED" in html and "COMPLETED" in html
    assert str(tmp_path) not in html  # relative links only
    durations = _durations(dump_dom(moved / "report.html"))
    assert len(durations) == 1
    (src,) = durations
    assert src.startswith("0/") and src.endswith(".flac") and durations[src] == pytest.approx(0.5, abs=1e-3)
    assert screenshot(moved / "report.html", "report-sweep.png").read_bytes()[:8] == PNG
