"""Items of a batch run: parsing ``prompts_file``, stable item ids, per-item seeds and sharding.

An item is one line of the prompts file (one prompt with all its candidates). Its id names its files
(``<item id>_c<candidate>.<ext>``) and its manifest rows, and decides resume and sharding:

- ``name`` when the line gives one (``prompt|name`` in ``.txt``, a ``name`` field in ``.jsonl``/``.csv``);
- otherwise the prompt's slug (as in ordinary file names), plus a short hash of the line's other fields when it has
  any, and of its occurrence number when the same line appears more than once.

The id does not depend on the line's position, so adding or reordering lines keeps the ids of the others. An item's
seed is its own ``seed`` field, or else derived from the run ``seed`` and its id (:func:`item_seed`): its audio does
not depend on the batch or the process that makes it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from ..config.prompts import prompt_problem
from ..outputs.files import prompt_slug
from ..runtime.errors import ConfigError

SUFFIXES = (".txt", ".jsonl", ".csv")
FIELDS = ("prompt", "negative_prompt", "seed", "name", "audio_length_s", "num_waveforms")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_MAX_REPORTED = 8


@dataclass(frozen=True)
class Item:
    """One prompt line with everything needed to generate its candidates."""

    id: str
    line: int  # 1-based line number in the prompts file (the header is line 1 of a CSV)
    prompt: str
    negative_prompt: str | None
    seed: int
    audio_length_s: float | None
    num_waveforms: int


def item_seed(run_seed: int, item_id: str) -> int:
    """A seed in [0, 2**63) from the run seed and the item id (SHA-256, so it is the same on every machine)."""
    digest = hashlib.sha256(f"{run_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def shard_items(items: list[Item], index: int, count: int) -> list[Item]:
    """Item k belongs to shard ``k % count``: the shards cover every item exactly once and stay balanced."""
    return [item for k, item in enumerate(items) if k % count == index]


def _raw_rows(path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    """(line number, fields) per non-blank line (per record of a CSV, numbered by its first line); a string in place
    of fields is that line's problem.

    Lines end at a line feed (CRLF and CR included) and nowhere else: Unicode line separators such as U+2028 are text,
    in ``.txt`` as in JSON strings, and a quoted CSV field keeps its line breaks (which the prompt check then refuses,
    as it refuses them in ``prompt=``).
    """
    text = _decode(path, path.read_bytes())
    rows: list[tuple[int, dict[str, Any] | str]] = []
    if path.suffix in (".txt", ".jsonl"):
        for n, line in enumerate(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), 1):
            if not line.strip() or (path.suffix == ".txt" and line.lstrip().startswith("#")):
                continue
            rows.append((n, _txt_fields(line) if path.suffix == ".txt" else _json_fields(line)))
        return rows
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, [])
        unknown = [f for f in header if f not in FIELDS]
        repeated = sorted({f for f in header if header.count(f) > 1})
        if "prompt" not in header or unknown or repeated:
            problem = (
                f"unknown column(s) {unknown}" if unknown
                else f"repeated column(s) {repeated}" if repeated
                else "needs a 'prompt' column"
            )  # fmt: skip
            raise ConfigError("prompts_file", f"{path}: line 1: {problem}; columns are {', '.join(FIELDS)}")
        first = reader.line_num + 1
        for record in reader:
            n, first = first, reader.line_num + 1
            if not record or not any(v.strip() for v in record):
                continue
            if len(record) > len(header):
                rows.append((n, f"has more fields than the header's {len(header)}"))
                continue
            rows.append((n, {k: v for k, v in zip(header, record, strict=False) if v != ""}))
    except csv.Error as exc:
        raise ConfigError("prompts_file", f"{path}: line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "prompts_file", f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})"
        ) from None


def _txt_fields(line: str) -> dict[str, Any]:
    prompt, sep, name = line.rpartition("|") if "|" in line else (line, "", "")
    return {"prompt": prompt.strip(), **({"name": name.strip()} if sep else {})}


def _json_fields(line: str) -> dict[str, Any] | str:
    try:
        value = json.loads(line, object_pairs_hook=_no_repeated_keys)
    except _RepeatedKey as exc:
        return f"the field {exc.args[0]!r} appears twice"
    except ValueError as exc:
        return f"not valid JSON ({getattr(exc, 'msg', exc)})"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    return value if isinstance(value, dict) else "must be a JSON object"


class _RepeatedKey(Exception):
    pass


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen[key] = value
    return seen


def _number(value: Any, kind: type, minimum: float, strict: bool = False) -> Any:
    """``value`` (a number or its text) as ``kind``; ValueError when it is not one or is out of range."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        value = kind(value.strip()) if kind is float else int(value.strip())
    if kind is int and not isinstance(value, int):
        raise ValueError(value)
    value = kind(value)
    if value != value or value in (float("inf"), float("-inf")) or value < minimum or (strict and value == minimum):
        raise ValueError(value)
    return value


def _check_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Normalised fields, or the first problem with them."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        return fields, f"unknown field(s) {unknown}; fields are {', '.join(FIELDS)}"
    out = dict(fields)
    prompt = out.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return out, "needs a non-empty prompt"
    for key in ("negative_prompt", "name"):
        if key in out and out[key] is not None and not isinstance(out[key], str):
            return out, f"{key} must be a string"
    problem = prompt_problem(prompt)
    if problem:
        return out, f"prompt {problem}"
    negative = out.get("negative_prompt")
    problem = prompt_problem(negative) if negative and negative.strip() else None
    if problem:
        return out, f"negative_prompt {problem}"
    name = out.get("name")
    if name is not None and not _NAME_RE.match(name):
        return out, f"name {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ + - (not starting with . or -)"
    checks = (("seed", int, 0, False), ("audio_length_s", float, 0, True), ("num_waveforms", int, 1, False))
    for key, kind, minimum, strict in checks:
        if out.get(key) is None:
            continue
        try:
            out[key] = _number(out[key], kind, minimum, strict)
        except (TypeError, ValueError):
            relation = ">" if strict else ">="
            return out, f"{key} must be {'an integer' if kind is int else 'a number'} {relation} {minimum}"
    if out.get("seed") is not None and out["seed"] >= 2**63:
        return out, "seed must be below 2**63"
    return out, None


def _default(cfg: DictConfig, key: str) -> Any:
    value = cfg.get(key)
    return value if not isinstance(value, ListConfig) else None


def read_items(cfg: DictConfig) -> list[Item]:
    """Parse and check ``prompts_file``; every malformed line is reported (with its number) in one ConfigError."""
    path = Path(str(cfg.prompts_file)).expanduser()
    if path.suffix not in SUFFIXES:
        raise ConfigError("prompts_file", f"{str(path)!r} must end in {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise ConfigError("prompts_file", f"{str(path)!r} does not exist or is not a file")
    try:
        rows = _raw_rows(path)
    except OSError as exc:
        raise ConfigError("prompts_file", f"{str(path)!r} cannot be read: {exc.strerror or exc}") from None

    problems: list[str] = []
    checked: list[tuple[int, dict[str, Any]]] = []
    names: dict[str, int] = {}
    for n, fields in rows:
        problem = fields if isinstance(fields, str) else None
        if problem is None:
            fields, problem = _check_fields(fields)
        if problem is None and fields.get("name") is not None:
            first = names.setdefault(fields["name"], n)
            if first != n:
                problem = f"name {fields['name']!r} is already used on line {first}"
        if problem:
            problems.append(f"line {n}: {problem}")
        else:
            checked.append((n, fields))
    if problems:
        more = f"; and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        raise ConfigError("prompts_file", f"{path}: " + "; ".join(problems[:_MAX_REPORTED]) + more)
    if not checked:
        raise ConfigError("prompts_file", f"{path}: has no prompts")
    return _make_items(cfg, checked)


def _make_items(cfg: DictConfig, checked: list[tuple[int, dict[str, Any]]]) -> list[Item]:
    max_length = int(cfg.output.get("name_max_length", 60))
    seen: dict[str, int] = {}
    items: list[Item] = []
    for n, fields in checked:
        extras = {k: fields[k] for k in FIELDS if k not in ("prompt", "name") and fields.get(k) is not None}
        key = json.dumps([fields["prompt"], extras], sort_keys=True, ensure_ascii=False)
        occurrence = seen.get(key, 0)
        seen[key] = occurrence + 1
        item_id = fields.get("name")
        if item_id is None:
            item_id = prompt_slug(fields["prompt"], max_length)
            if extras or occurrence:
                item_id += "-" + hashlib.sha1(f"{key}#{occurrence}".encode()).hexdigest()[:8]
        items.append(
            Item(
                id=item_id,
                line=n,
                prompt=fields["prompt"],
                negative_prompt=fields.get("negative_prompt", _default(cfg, "negative_prompt")),
                seed=fields["seed"] if fields.get("seed") is not None else item_seed(int(cfg.seed), item_id),
                audio_length_s=fields.get("audio_length_s", cfg.get("audio_length_s")),
                num_waveforms=int(fields.get("num_waveforms", cfg.num_waveforms)),
            )
        )
    first_line: dict[str, int] = {}
    for item in items:
        first = first_line.setdefault(item.id, item.line)
        if first != item.line:
            raise ConfigError("prompts_file", f"line {item.line}: item id {item.id!r} is already used on line {first}")
    return items
