"""``task=doctor``: versions, devices, known incompatibilities, and a non-zero exit when the defaults cannot run."""

from __future__ import annotations

import io

import pytest
from support import child_env

from audioldm2_fast.cli import main
from audioldm2_fast.runtime.errors import EnvironmentProblem
from audioldm2_fast.tasks import doctor


def _report() -> tuple[int, str]:
    out = io.StringIO()
    code = doctor.run_doctor(out)
    return code, out.getvalue()


def test_doctor_reports_versions_devices_and_incompatibilities():
    import diffusers
    import hydra
    import torch
    import transformers
    from transformers import GPT2Model

    code, text = _report()
    assert code == 0, text
    for name, version in [("torch", torch.__version__), ("diffusers", diffusers.__version__),
                          ("transformers", transformers.__version__), ("hydra-core", hydra.__version__)]:  # fmt: skip
        assert any(line.split()[1:3] == [name, version] for line in text.splitlines()), name
    assert "cuda" in text and "mps" in text and "libsndfile" in text and "torch.compile" in text
    (prior_line,) = [ln for ln in text.splitlines() if "GPT-2 prior" in ln]
    applies = not hasattr(GPT2Model, "_update_model_kwargs_for_generation")
    assert ("applies (" in prior_line) == applies
    assert "tiny checkpoint" in text and text.rstrip().endswith("the default settings can run here")


def test_a_version_outside_the_required_range_fails(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: "1.0.0" if dist == "torch" else real(dist))
    code, text = _report()
    assert code == EnvironmentProblem.exit_code == 6
    (line,) = [ln for ln in text.splitlines() if ln.split()[1:2] == ["torch"]]
    assert line.split()[0] == "FAIL" and "1.0.0 (needs >=" in line
    assert "1 check(s) failed" in text


def test_a_missing_required_package_fails(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: None if dist == "transformers" else real(dist))
    code, text = _report()
    assert code == 6 and "transformers" in text and "not installed" in text


def test_no_wav_support_fails(monkeypatch):
    import soundfile

    monkeypatch.setattr(soundfile, "available_formats", lambda: {"FLAC": "FLAC"})
    code, text = _report()
    assert code == 6
    assert any(ln.split()[:2] == ["FAIL", "libsndfile"] for ln in text.splitlines())


def test_a_broken_probe_is_a_failed_line_not_a_crash(monkeypatch):
    def broken():
        raise RuntimeError("driver exploded")
        yield  # pragma: no cover

    monkeypatch.setattr(doctor, "CHECKS", (*doctor.CHECKS, broken))
    code, text = _report()
    assert code == 6 and "driver exploded" in text


def test_cli_doctor_needs_no_prompt_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from audioldm2_fast.checkpoints import store as loading

    monkeypatch.setattr(loading.ComponentStore, "_load", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["task=doctor"])
    assert exc.value.code == 0
    assert "audioldm2-fast doctor" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_cli_doctor_exits_non_zero_when_the_defaults_cannot_run(tmp_path, monkeypatch, capsys):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda dist: "0.1" if dist == "diffusers" else real(dist))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["task=doctor"])
    assert exc.value.code == 6
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and captured.err.startswith("audioldm2-fast: error: 1 check(s) failed")


@pytest.mark.slow
def test_doctor_command_in_a_real_process(tmp_path):
    import subprocess
    import sys

    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "audioldm2_fast", "task=doctor"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "transformers" in proc.stdout and "GPT-2 prior" in proc.stdout and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
