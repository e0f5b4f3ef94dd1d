"""The Python API (Generator) and progress bars: same validation as the CLI, metadata returned, bars only on a TTY."""

from __future__ import annotations

import io
import sys

import pytest
from support import FAST

from audioldm2_fast import Generator
from audioldm2_fast.cli import check_overrides
from audioldm2_fast.runtime.errors import ConfigError


@pytest.mark.parametrize(
    "override",
    ["scheduler=nope", "stepz=3", "steps=0", "output.format=aiff", "prompt=[]", "scheduler=ddim,pndm"],
)
def test_from_config_raises_the_clis_config_error(override):
    overrides = (
        ["checkpoint=tiny", "prompt=x", override] if "prompt=" not in override else ["checkpoint=tiny", override]
    )
    with pytest.raises(ConfigError) as api:
        Generator.from_config(overrides)
    with pytest.raises(ConfigError) as cli:
        check_overrides(overrides)
    assert str(api.value) == str(cli.value) and api.value.key


def test_without_the_writer_nothing_is_written_and_metadata_comes_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gen = Generator.from_config([*FAST, "steps=2", "prompt=[rain,wind]", "num_waveforms=2", "seed=5"], write=False)
    assert "writer" not in gen.cfg.pipeline.chain
    result = gen.generate(guidance_scale=2.0)
    assert list(tmp_path.iterdir()) == [] and result.records == []
    assert result.waveforms.shape == (4, 16000) and result.sample_rate == 16000
    meta = result.metadata
    assert meta["prompts"] == ["rain", "wind"] and meta["seed"] == 5 and meta["steps"] == 2
    assert meta["guidance_scale"] == 2.0 and meta["scheduler"] == "dpmpp_2m" and meta["checkpoint"] == "tiny"
    assert meta["audio_length_s"] == 1.0 and set(meta["stages"]) == set(gen.cfg.pipeline.chain)
    assert result.ranks is not None and sorted(result.ranks[:2]) == [1, 2]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "progress", "shown"), [(True, "true", True), (True, "false", False), (False, "true", False)]
)
def test_progress_bars_only_on_a_terminal(make_generator, monkeypatch, tty, progress, shown):
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    make_generator(
        "prompt=x",
        "steps=3",
        f"progress={progress}",
        "pipeline.chain=[text_encoders,prior,denoiser,vae_decoder,vocoder]",
    ).generate()
    text = err.getvalue()
    assert ("denoising" in text and "0/3" in text and "loading" in text and "denoiser" in text) is shown
    if not shown:
        assert "denoising" not in text and "loading" not in text and "it/s" not in text and "step/s" not in text
