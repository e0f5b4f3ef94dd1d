"""The design card's layout, the README's two set-up commands and CI's use of the test command."""

from __future__ import annotations

import re
import subprocess

from support import ROOT


def test_top_level_layout():
    for path in ["conf", "src/audioldm2_fast", "tests", "outputs", "pyproject.toml", "README.md", ".ci/run"]:
        assert (ROOT / path).exists(), path
    assert (ROOT / "outputs" / ".gitkeep").is_file()


def test_outputs_contents_are_ignored_but_the_placeholder_is_kept():
    def ignored(rel: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT).returncode == 0

    assert ignored("outputs/2026-01-01/12-00-00/x.wav")
    assert not ignored("outputs/.gitkeep")


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S)


def test_readme_gives_exactly_two_setup_commands():
    blocks = _setup_commands()
    assert len(blocks) == 2
    demo, tests = (b.strip() for b in blocks)
    assert "checkpoint=tiny" in (ROOT / "Makefile").read_text() and "demo" in demo
    assert "test" in tests


def test_ci_runs_the_readme_test_command():
    test_command = _setup_commands()[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()
