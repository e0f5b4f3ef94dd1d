"""The command line answers at once: help, config printing, shell completion and refusals of bad input import
neither torch nor diffusers nor transformers (README, "How it fits together")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, sys
from audioldm2_fast.cli import main
code = 0
try:
    main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
print("@@" + json.dumps({"code": code, "heavy": heavy}))
"""


def _probe(argv: list[str], tmp_path: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("@@"))
    return {**json.loads(line[2:]), "stderr": proc.stderr}


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["--cfg", "job", "checkpoint=tiny"], 0),
        (["-sc", "install=bash"], 0),
        (["checkpoint=tiny", "prompt=x", "stepz=3"], 2),  # a typo in a key
        (["checkpoint=tiny", "prompt=x", "steps=0"], 2),  # a value out of range
        (["checkpoint=tiny", "prompt=x", "scheduler=nope"], 2),  # an unknown option
        (["checkpoint=tiny", "prompt=x", "--frobnicate"], 2),  # an unknown flag
        (["checkpoint=tiny", "prompt='a\tb'"], 2),  # a control character in a prompt
        (["checkpoint=tiny", "prompt=x", "device=cpu", "precision=fp16"], 2),  # a combination the CPU cannot run
        (["checkpoint=tiny", "prompt=x", "stages.vocoder.impl=nope"], 2),  # an unknown stage name
        (["checkpoint=local", "checkpoint.path=/does/not/exist", "prompt=x"], 2),
        (["checkpoint=tiny", "prompts_file=/does/not/exist.txt"], 2),
        (["checkpoint=tiny", "prompt=x", "task=benchmark", "benchmark.runs=0"], 2),
    ],
)
def test_no_model_library_is_imported_to_answer(argv, code, tmp_path):
    result = _probe(argv, tmp_path)
    assert result["code"] == code, result["stderr"]
    assert result["heavy"] == [], f"{argv} imported {result['heavy']}"
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_help_lists_every_group_and_key_from_the_config_files():
    from audioldm2_fast.config.help import help_text, key_lines
    from audioldm2_fast.config.paths import conf_dir, config_groups

    text = help_text()
    for group, options in config_groups().items():
        assert f"  {group:<12} {', '.join(options)}" in text
    keys = [key for key, _, _ in key_lines(conf_dir() / "config.yaml")]
    assert {"prompt", "seed", "output.dir", "memory.budget_gb", "benchmark.runs", "shard.index"} <= set(keys)
    assert all(f"  {key}=" in text for key in keys)
