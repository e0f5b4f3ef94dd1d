"""Where the config tree lives: inside the installed package, or at the top of a source checkout."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    packaged = Path(__file__).resolve().parents[1] / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "conf"


def config_groups(extra_dir: Path | None = None) -> dict[str, list[str]]:
    """Each config group and its options (file names without .yaml), also from a ``--config-dir``."""
    groups: dict[str, set[str]] = {}
    for root in (conf_dir(), extra_dir):
        if root is None:
            continue
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hydra"):
            options = {str(f.relative_to(sub).with_suffix("")) for f in sub.rglob("*.yaml")}
            groups.setdefault(sub.name, set()).update(options)
    return {name: sorted(options) for name, options in sorted(groups.items())}
