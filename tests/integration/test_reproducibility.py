"""Same config and seed, same audio, bit for bit, across processes; the manifest says how to reproduce a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import child_env

from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.outputs.provenance import config_hash, library_versions

ARGS = ["checkpoint=tiny", "prompt=[rain,a dog barking]", "num_waveforms=2", "steps=3", "audio_length_s=0.5",
        "scheduler=dpm_sde", "seed=7", "output.subtype=FLOAT"]  # fmt: skip


def _run(out: Path, cwd: Path) -> list[dict]:
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "audioldm2_fast", *ARGS, f"output.dir={out}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_write_bit_identical_audio(tmp_path):
    """dpm_sde draws scheduler noise at every step too, so this covers more than the initial latents."""
    rows_a = _run(tmp_path / "a", tmp_path)
    rows_b = _run(tmp_path / "b", tmp_path)
    assert [r["path"] for r in rows_a] == [r["path"] for r in rows_b] and len(rows_a) == 4
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert (tmp_path / "a" / ra["path"]).read_bytes() == (tmp_path / "b" / rb["path"]).read_bytes()
        assert ra["provenance"]["config_sha256"] == rb["provenance"]["config_sha256"]
    # the two runs differ only in output.dir, which the hash leaves out
    digest = rows_a[0]["provenance"]["config_sha256"]
    saved = tmp_path / "a" / f"config-{digest[:12]}.yaml"
    assert yaml.safe_load(saved.read_text())["seed"] == 7


def test_manifest_records_versions_and_the_config_hash(make_generator, tmp_path):
    out = tmp_path / "o"
    gen = make_generator("prompt=x", out=out)
    gen.generate()
    row = json.loads((out / "manifest.jsonl").read_text())
    versions = row["provenance"]["versions"]
    import diffusers
    import torch
    import transformers

    assert versions["torch"] == torch.__version__ and versions["diffusers"] == diffusers.__version__
    assert versions["transformers"] == transformers.__version__ and versions["hydra-core"]
    assert set(versions) >= {"python", "numpy", "soundfile", "libsndfile", "omegaconf"}
    assert row["provenance"]["config_sha256"] == config_hash(gen.cfg)
    saved = out / f"config-{config_hash(gen.cfg)[:12]}.yaml"
    assert compose_config(["checkpoint=tiny", "prompt=x"]).seed == yaml.safe_load(saved.read_text())["seed"]
    assert library_versions() is library_versions()  # computed once per process


def test_config_hash_ignores_the_output_dir_but_not_the_settings():
    base = ["checkpoint=tiny", "prompt=x"]
    a = config_hash(compose_config([*base, "output.dir=/tmp/a"]))
    assert a == config_hash(compose_config([*base, "output.dir=/tmp/b"]))
    assert a != config_hash(compose_config([*base, "output.dir=/tmp/a", "seed=1"]))
    assert a != config_hash(compose_config([*base, "output.dir=/tmp/a", "scheduler=ddim"]))
