"""Headless Chromium (Debian's ``chromium`` package) driven from the command line: read a page's DOM, take a shot."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium; .ci/run does it)"
)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts/, git-ignored


def _chromium(page: Path, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000", *args, page.resolve().as_uri(),
        ]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def dump_dom(page: Path) -> str:
    """The page's DOM after its scripts ran (audio metadata loaded)."""
    return _chromium(page, "--dump-dom").stdout


def screenshot(page: Path, name: str) -> Path:
    """A full-window PNG of the page, kept under tests/artifacts/ (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / name
    _chromium(page, f"--screenshot={target}", "--window-size=1400,1600", "--hide-scrollbars")
    return target
