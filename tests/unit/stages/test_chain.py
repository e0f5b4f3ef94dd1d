"""A chain is checked before anything loads: each stage's class, its own settings, and that every state field a
stage reads is written by the request or an earlier stage."""

from __future__ import annotations

import pytest

from audioldm2_fast.cli import main
from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.runtime.errors import ConfigError
from audioldm2_fast.stages.registry import check_chain
from audioldm2_fast.stages.state import REQUEST_FIELDS

CHAIN = ["text_encoders", "prior", "denoiser", "vae_decoder", "vocoder", "ranker", "writer"]


def _chain(*overrides: str):
    return check_chain(compose_config(["checkpoint=tiny", "prompt=x", *overrides]))


def test_the_default_chain_reads_only_what_is_written_before():
    entries = _chain()
    assert [e.name for e in entries] == CHAIN
    written = set(REQUEST_FIELDS)
    for entry in entries:
        assert set(entry.cls.reads) <= written, entry.name
        written |= set(entry.cls.writes)


@pytest.mark.parametrize(
    "chain, message",
    [
        ("[prior,text_encoders,denoiser,vae_decoder,vocoder]", "stage 'prior' reads 'clap_embeds'"),
        ("[text_encoders,denoiser,vae_decoder,vocoder]", "stage 'denoiser' reads 'generated_embeds'"),
        ("[text_encoders,prior,denoiser,vocoder,vae_decoder]", "stage 'vocoder' reads 'mel'"),
        ("[text_encoders,prior,denoiser,vae_decoder,writer]", "stage 'writer' reads 'waveforms'"),
    ],
)
def test_a_chain_in_the_wrong_order_is_refused_naming_the_field(chain, message):
    with pytest.raises(ConfigError, match=message) as info:
        _chain(f"pipeline.chain={chain}")
    assert info.value.key == "pipeline.chain" and "\n" not in str(info.value)


def test_the_refusal_names_the_stage_that_writes_the_field():
    with pytest.raises(ConfigError, match="prior write"):
        _chain("pipeline.chain=[text_encoders,denoiser,vae_decoder,vocoder]")


def test_a_stage_that_implements_nothing_is_refused():
    with pytest.raises(ConfigError, match="implements nothing") as info:
        _chain("stages.vocoder.impl=custom_stages:EmptyStage")
    assert info.value.key == "stages.vocoder.impl"


def test_a_stage_setting_of_the_wrong_type_names_its_key():
    with pytest.raises(ConfigError, match="stages.vae_decoder.vae_overlap_frames") as info:
        _chain("stages.vae_decoder.vae_overlap_frames=-1")
    assert ">= 0" in str(info.value)


def test_chain_refusals_come_before_any_model_loads(monkeypatch, capsys, tmp_path):
    from audioldm2_fast.checkpoints import store

    monkeypatch.setattr(store.ComponentStore, "_load", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["checkpoint=tiny", "prompt=x", "pipeline.chain=[text_encoders,denoiser,vae_decoder,vocoder]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pipeline.chain" in err
    assert list(tmp_path.iterdir()) == []
