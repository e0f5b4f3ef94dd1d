"""Where the config tree lives: inside the installed package, or at the top of a source checkout."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    packaged = Path(__file__).resolve().parents[1] / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "conf"


def config_groups(*extra_dirs: Path | None) -> dict[str, list[str]]:
    """Each config group and its options (file names without .yaml), also from a ``--config-dir`` and the
    directories of ``hydra.searchpath``."""
    groups: dict[str, set[str]] = {}
    for root in (conf_dir(), *extra_dirs):
        if root is None or not root.is_dir():
            continue
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hydra"):
            # A file whose name starts with "_" is what the group's options extend, not an option itself.
            files = (f for f in sub.rglob("*.yaml") if not f.name.startswith("_"))
            options = {str(f.relative_to(sub).with_suffix("")) for f in files}
            groups.setdefault(sub.name, set()).update(options)
    return {name: sorted(options) for name, options in sorted(groups.items())}
