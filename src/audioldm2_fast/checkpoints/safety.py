"""Checks on a checkpoint directory's files, made before any of its weights are read.

Weight files in a pickle format (``.bin``, ``.pt``, ``.ckpt``, ...) can run arbitrary code when loaded, so a component
whose only weights are pickles is refused unless ``checkpoint.allow_pickle=true`` says the checkpoint is trusted.
Every JSON file of every component must parse, and every ``.safetensors`` file must be whole: its header must parse
and describe tensors whose bytes the file holds, exactly (a download cut short fails here, in one line naming the
file, rather than deep inside ``from_pretrained``). Only the headers are read, never the weights.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from ..runtime.errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Components without weights: tokenizers, the feature extractor and the scheduler.
WEIGHTLESS = {"tokenizer", "tokenizer_2", "feature_extractor", "scheduler"}
#: Bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header size


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor entries of a ``.safetensors`` file's header, checked against the file's size.

    Raises ValueError saying what is wrong: a file shorter than its header says, a header that is not JSON, a tensor
    whose shape, dtype and byte range disagree, or bytes no tensor accounts for.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise ValueError(f"it is {size} bytes long, too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER or 8 + length > size:
            raise ValueError(
                f"its header says {length} bytes of header, but the file has {size} bytes in all (cut short?)"
            )
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    data_size = size - 8 - length
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            count = math.prod(int(d) for d in shape) if all(isinstance(d, int) and d >= 0 for d in shape) else -1
            ok = dtype in DTYPE_BYTES and count >= 0 and 0 <= begin <= end and end - begin == count * DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"its header entry for {name!r} is not a valid tensor ({str(entry)[:120]})")
        if end > data_size:
            raise ValueError(
                f"it is cut short: tensor {name!r} ends at byte {end} of the data, which has {data_size} bytes"
            )
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            break
        covered = end
    if covered != data_size:
        raise ValueError(f"its {data_size} data bytes are not exactly the tensors its header describes")
    return {k: v for k, v in header.items() if k != "__metadata__"}


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
        for weights in safetensors:
            try:
                safetensors_header(weights)
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise CheckpointError(f"checkpoint {path}: {str(weights)!r} is damaged: {reason}") from None
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
