"""Checks on a checkpoint directory's files, made before any of its weights are read.

Weight files in a pickle format (``.bin``, ``.pt``, ``.ckpt``, ...) can run arbitrary code when loaded, so a component
whose only weights are pickles is refused unless ``checkpoint.allow_pickle=true`` says the checkpoint is trusted.
Every JSON file of every component must parse, so that a corrupted config fails here in one line rather than deep
inside ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..runtime.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Components without weights: tokenizers, the feature extractor and the scheduler.
WEIGHTLESS = {"tokenizer", "tokenizer_2", "feature_extractor", "scheduler"}


def weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle-format files) directly inside ``folder``."""
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    return [p for p in files if p.suffix == ".safetensors"], [p for p in files if p.suffix in PICKLE_SUFFIXES]


def check_checkpoint_files(path: Path, index: dict[str, Any], allow_pickle: bool = False) -> None:
    """Raise CheckpointError for a missing component folder, an unparseable JSON file, or weights we will not load."""
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[-1] is None:
            continue
        folder = path / name
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint {path}: component {name!r} has no folder {str(folder)!r}")
        for json_file in sorted(folder.glob("*.json")):
            try:
                json.loads(json_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0]
                raise CheckpointError(f"checkpoint {path}: cannot parse {str(json_file)!r}: {reason}") from None
        if name in WEIGHTLESS:
            continue
        safetensors, pickles = weight_files(folder)
        if safetensors:
            continue
        if pickles and not allow_pickle:
            names = ", ".join(p.name for p in pickles)
            raise CheckpointError(
                f"checkpoint {path}: component {name!r} has only pickle-based weights ({names}), which can run code "
                "when loaded; convert them to .safetensors, or set checkpoint.allow_pickle=true if you trust this "
                "checkpoint"
            )
        if not pickles:
            raise CheckpointError(f"checkpoint {path}: component {name!r} has no weight files in {str(folder)!r}")
