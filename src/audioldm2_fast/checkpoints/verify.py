"""A checkpoint's component configs, checked before any weights load.

Each weight component's class is built from its config on the ``meta`` device (shapes, no data), exactly as
``from_pretrained`` would build it: a value the class rejects (``"in_channels": -3``, a block type it does not know)
fails here, in one line naming the config file, and exit code 3. The parameter shapes the config gives are then
compared with the tensors of the component's safetensors files (read from their headers only): a config that does not
describe its weights is refused the same way. The file checks themselves (every JSON parses, every safetensors file is
whole) are in :mod:`.safety`, which needs no torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch

from ..runtime.errors import CheckpointError
from .safety import WEIGHTLESS, safetensors_header, weight_files
from .store import ComponentStore

#: Components already checked in this process, with the state of their files then (so a changed file is checked anew).
_CHECKED: set[tuple] = set()


def check_component_configs(store: ComponentStore, names: Iterable[str]) -> None:
    """Build each named weight component on ``meta`` and compare its shapes with its weights; CheckpointError if not."""
    for name in names:
        if name in WEIGHTLESS:
            continue
        folder = store.path / name
        signature = (str(folder), *_stat(folder))
        if signature in _CHECKED:
            continue
        config = _config_file(folder)
        try:
            with warnings.catch_warnings():  # the model libraries' advice on odd values: the error below says it
                warnings.simplefilter("ignore")
                module = store.meta(name, torch.float32)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the model class raises, reported on its config file
            class_name = store.index.get(name, [None, "?"])[-1]
            raise CheckpointError(
                f"checkpoint {store.path}: {config} has values {class_name} cannot be built with: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None
        if module is not None:
            _compare_shapes(store.path, name, config, module, weight_files(folder)[0])
        _CHECKED.add(signature)


def _compare_shapes(root: Path, name: str, config: str, module: torch.nn.Module, files: list[Path]) -> None:
    expected = {key: list(t.shape) for key, t in module.state_dict().items()}
    if not files or not expected:
        return
    stored: dict[str, tuple[list[int], Path]] = {}
    for path in files:
        for key, entry in safetensors_header(path).items():
            stored[key] = (list(entry["shape"]), path)
    # Files saved from a wrapper (GPT2LMHeadModel for a GPT2Model, say) prefix every key; use the naming that fits.
    prefix = getattr(module, "base_model_prefix", "") or ""
    namings = [lambda k: k]
    if prefix:
        namings += [lambda k: k.removeprefix(prefix + "."), lambda k: f"{prefix}.{k}"]
    best = max(({n(k): v for k, v in stored.items()} for n in namings), key=lambda m: len(m.keys() & expected.keys()))
    if len(best.keys() & expected.keys()) * 2 < len(stored):
        return  # a layout this check does not know; from_pretrained reports what it finds
    for key in sorted(best.keys() & expected.keys()):
        shape, path = best[key]
        if shape != expected[key]:
            raise CheckpointError(
                f"checkpoint {root}: {config} does not describe {str(path)!r}: {key} is {shape} in the file but "
                f"{expected[key]} by the config"
            )


def _config_file(folder: Path) -> str:
    for fname in ("config.json", "scheduler_config.json", "preprocessor_config.json"):
        if (folder / fname).is_file():
            return str(folder / fname)
    return str(folder)


def _stat(folder: Path) -> tuple:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
        return tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
    except OSError:
        return ()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no details"
