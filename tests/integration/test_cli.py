"""The command line end to end, in fresh processes, as a user runs it."""

from __future__ import annotations

import json

import pytest
from support import run_cli as _run


@pytest.mark.slow
def test_cli_generates_into_the_hydra_run_dir(tmp_path):
    proc = _run(
        [
            "checkpoint=tiny",
            "prompt=The sound of Brazilian samba drums",
            "negative_prompt=Low quality.",
            "seed=0",
            "num_waveforms=2",
            "steps=3",
            "audio_length_s=0.5",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    rows = [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2]
    assert all((run_dir / r["path"]).is_file() for r in rows)
    assert "generated 2 waveform(s), wrote 2 file(s)" in proc.stdout


@pytest.mark.slow
def test_python_dash_m_is_the_same_app(tmp_path):
    out = tmp_path / "o"
    proc = _run(
        ["checkpoint=tiny", "prompt=x", "steps=2", "audio_length_s=0.5", f"output.dir={out}"], cwd=tmp_path, module=True
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.glob("*.wav"))) == 1


@pytest.mark.slow
def test_missing_hub_checkpoint_is_one_line(tmp_path):
    proc = _run(["prompt=x", "checkpoint=audioldm2-music"], cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 3
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cvssp/audioldm2-music" in err and "checkpoint=tiny" in err and "HF_HOME" in err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_local_checkpoint_loads_like_tiny(tmp_path, tiny_dir):
    out = tmp_path / "o"
    proc = _run(
        [
            "checkpoint=local",
            f"checkpoint.path={tiny_dir}",
            "prompt=x",
            "steps=2",
            "audio_length_s=0.5",
            f"output.dir={out}",
            "scheduler=ddim",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    row = json.loads((out / "manifest.jsonl").read_text())
    assert row["checkpoint"] == str(tiny_dir) and row["scheduler"] == "ddim"


@pytest.mark.slow
def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    proc = _run(["checkpoint=tiny", "prompt=x", f"output.dir={target}"], cwd=tmp_path)
    assert proc.returncode == 2 and "output.dir" in proc.stderr
    assert target.read_text() == "keep me"


@pytest.mark.slow
def test_multirun_sweep_writes_one_run_per_job(tmp_path):
    proc = _run(
        ["-m", "checkpoint=tiny", "prompt=x", "scheduler=ddim,dpmpp_2m", "steps=2", "audio_length_s=0.5"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    manifests = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/manifest.jsonl"))
    assert len(manifests) == 2
    assert {json.loads(m.read_text())["scheduler"] for m in manifests} == {"ddim", "dpmpp_2m"}
