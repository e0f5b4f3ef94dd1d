"""The Hydra app's config: groups, keys, and bad input refused in one line before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import ROOT

from audioldm2_fast.cli import main
from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.config.paths import conf_dir, config_groups

REQUIRED_GROUPS = {"checkpoint", "scheduler", "precision", "attention", "compile", "offload", "pipeline"}
REQUIRED_KEYS = [
    "prompt",
    "negative_prompt",
    "seed",
    "num_waveforms",
    "audio_length_s",
    "guidance_scale",
    "steps",
    "eta",
    "device",
    "output.dir",
    "output.format",
    "output.subtype",
]


def test_groups_and_keys_exist():
    assert set(config_groups()) >= REQUIRED_GROUPS
    assert {"audioldm2", "audioldm2-large", "audioldm2-music", "local", "tiny"} <= set(config_groups()["checkpoint"])
    cfg = compose_config(["checkpoint=tiny", "prompt=x"])
    for key in REQUIRED_KEYS:
        assert key.split(".")[-1] in (cfg.output if key.startswith("output.") else cfg), key
    for stage in ["text_encoders", "prior", "denoiser", "vae_decoder", "vocoder", "ranker", "writer"]:
        assert stage in cfg.pipeline.chain
        assert {"impl", "device", "dtype"} <= set(cfg.stages[stage])


def test_hub_checkpoints_name_their_repos():
    for name, repo in [
        ("audioldm2", "cvssp/audioldm2"),
        ("audioldm2-large", "cvssp/audioldm2-large"),
        ("audioldm2-music", "cvssp/audioldm2-music"),
    ]:
        assert compose_config([f"checkpoint={name}"]).checkpoint.repo_id == repo


def test_steps_default_comes_from_the_scheduler_option():
    from audioldm2_fast.stages.schedulers import num_steps

    assert num_steps(compose_config(["scheduler=ddim"])) == 200
    assert num_steps(compose_config(["scheduler=dpmpp_2m"])) == 20
    assert num_steps(compose_config(["scheduler=ddim", "steps=7"])) == 7


def _not_audioldm2_dir(tmp_path: Path) -> str:
    d = tmp_path / "sd"
    d.mkdir()
    (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return str(d)


BAD = [
    # (overrides, key the message must name)
    (["prompt=''"], "prompt"),
    (["prompt='   '"], "prompt"),
    (["prompt=[]"], "prompt"),
    ([], "prompt"),
    (["prompt=x", "steps=0"], "steps"),
    (["prompt=x", "steps=-3"], "steps"),
    (["prompt=x", "steps=abc"], "steps"),
    (["prompt=x", "audio_length_s=0"], "audio_length_s"),
    (["prompt=x", "audio_length_s=-1.5"], "audio_length_s"),
    (["prompt=x", "num_waveforms=0"], "num_waveforms"),
    (["prompt=x", "guidance_scale=-1"], "guidance_scale"),
    (["prompt=[a,b]", "negative_prompt=[n1,n2,n3]"], "negative_prompt"),
    (["prompt=x", "scheduler=nope"], "scheduler"),
    (["prompt=x", "checkpoint=nope"], "checkpoint"),
    (["prompt=x", "precision=fp8"], "precision"),
    (["prompt=x", "stpes=20"], "stpes"),
    (["prompt=x", "checkpoint=local"], "checkpoint.path"),
    (["prompt=x", "checkpoint=local", "checkpoint.path=/does/not/exist"], "checkpoint.path"),
    (["prompt=x", "output.format=mp4"], "output.format"),
    (["prompt=x", "output.format=flac", "output.subtype=FLOAT"], "output.subtype"),
    (["prompt=x", "device=gpu"], "device"),
    (["prompt=x", "device=cuda"], "device"),
    (["prompt=x", "stages.vocoder.device=tpu"], "stages.vocoder.device"),
    (["prompt=x", "stages.vocoder.impl=no_such_stage"], "stages.vocoder.impl"),
    (["prompt=x", "seed=-1"], "seed"),
    (["prompt=x", "scheduler=ddim,pndm"], "scheduler"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) or "no-prompt" for o, _ in BAD])
def test_bad_input_fails_fast_in_one_line(overrides, key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # any output dir would appear here
    with pytest.raises(SystemExit) as exc:
        main(["checkpoint=tiny", *overrides])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("audioldm2-fast: error: ")
    assert key in err, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "a refused run must not write anything"


def test_local_dir_that_is_not_audioldm2_is_refused(tmp_path, monkeypatch, capsys):
    path = _not_audioldm2_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["prompt=x", "checkpoint=local", f"checkpoint.path={path}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "checkpoint.path" in err and "StableDiffusionPipeline" in err


def test_bad_input_is_refused_before_models_load(monkeypatch, capsys):
    from audioldm2_fast.checkpoints import store as loading

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading.ComponentStore, "_load", boom)
    with pytest.raises(SystemExit):
        main(["checkpoint=tiny", "prompt=x", "steps=0"])
    assert "steps" in capsys.readouterr().err


def test_conf_dir_is_the_top_level_conf():
    assert conf_dir() == ROOT / "conf"
