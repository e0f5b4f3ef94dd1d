"""An optimisation added from outside the package: one module and one config group option on ``hydra.searchpath``,
with no edit of the package. It declares its settings (a schema), its rule and how it applies itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import FAST, ROOT

from audioldm2_fast import Generator
from audioldm2_fast.runtime.errors import ConfigError

README = ROOT / "README.md"


def readme_examples() -> dict[str, str]:
    """The files of README's worked examples: a ``<!-- example: PATH -->`` line, then a fenced block."""
    text = README.read_text()
    found = re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", text, flags=re.S)
    return dict(found)


@pytest.fixture
def outside(tmp_path, monkeypatch) -> Path:
    """README's examples written out as a user would: modules on PYTHONPATH, config groups on a search path."""
    root = tmp_path / "outside"
    for name, text in readme_examples().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.syspath_prepend(str(root))
    return root


def test_readme_has_the_three_examples():
    assert set(readme_examples()) == {
        "my_stages.py",
        "conf/pipeline/with_fade.yaml",
        "conf/scheduler/euler_karras.yaml",
        "toy_gain.py",
        "conf/gain/double.yaml",
    }


def test_the_stage_example_runs_in_its_place_in_the_chain(outside):
    searchpath = f"hydra.searchpath=[file://{outside / 'conf'}]"
    base = Generator.from_config([*FAST, "steps=2"], write=False)(prompt="rain").waveforms
    gen = Generator.from_config([*FAST, "steps=2", searchpath, "pipeline=with_fade"], write=False)
    assert [s.name for s in gen.stages][5] == "fade"
    out = gen(prompt="rain").waveforms
    n = int(0.25 * 16000)
    np.testing.assert_array_equal(out[:, :-n], base[:, :-n])
    np.testing.assert_allclose(out[:, -n:], base[:, -n:] * np.linspace(1.0, 0.0, n), rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="stages.fade.seconds"):
        Generator.from_config([*FAST, searchpath, "pipeline=with_fade", "stages.fade.seconds=-1"], write=False)


def test_the_scheduler_example_is_one_yaml_file(outside):
    searchpath = f"hydra.searchpath=[file://{outside / 'conf'}]"
    gen = Generator.from_config([*FAST, searchpath, "scheduler=euler_karras"], write=False)
    denoiser = next(s for s in gen.stages if s.name == "denoiser")
    assert denoiser.settings.scheduler.config == {"use_karras_sigmas": True}
    result = gen(prompt="rain")
    assert result.metadata["scheduler"] == "euler_karras" and result.metadata["steps"] == 4
    assert np.isfinite(result.waveforms).all()


def test_an_optimisation_from_outside_the_package_applies_itself(outside):
    base = Generator.from_config([*FAST, "steps=2"], write=False)
    doubled = Generator.from_config(
        [*FAST, "steps=2", f"hydra.searchpath=[file://{outside / 'conf'}]", "+gain=double"], write=False
    )
    assert doubled.optimization("gain").gain == 2.0
    plain, scaled = base(prompt="rain").waveforms, doubled(prompt="rain").waveforms
    np.testing.assert_allclose(scaled, 2 * plain, rtol=0, atol=1e-6)


def test_its_schema_and_rule_refuse_bad_settings(outside):
    searchpath = f"hydra.searchpath=[file://{outside / 'conf'}]"
    with pytest.raises(ConfigError, match="would clip") as info:
        Generator.from_config([*FAST, searchpath, "+gain=double", "gain.gain=11"], write=False)
    assert info.value.key == "gain.gain"
    with pytest.raises(ConfigError, match="must be a finite number") as info:
        Generator.from_config([*FAST, searchpath, "+gain=double", "gain.gain=loud"], write=False)
    assert info.value.key == "gain.gain"


def test_the_command_line_takes_it_too(outside, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(outside), *sys.path])}
    args = [*FAST, f"hydra.searchpath=[file://{outside / 'conf'}]", "+gain=double", "prompt=rain"]
    bad = subprocess.run(
        [sys.executable, "-m", "audioldm2_fast", *args, "gain.stage=nope"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "gain.stage" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    good = subprocess.run(
        [sys.executable, "-m", "audioldm2_fast", *args, "debug=default"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
